"""Prompt formatting shared by training and evaluation, so both format identically.

A `PromptFormat` is configuration (`conf/prompt/*.yaml`): the family code only supplies its tokens and chat
layout. Steps for one text (with or without an image):

1. The MMEB placeholder `<|image_1|>` becomes the family's image token, in the `image_layout` asked for
   (`bare`: Qwen2-VL `<|image_pad|>`; `wrapped`: `<|vision_start|><|image_pad|><|vision_end|>`; LLaVA `<image>`
   either way), where the placeholder stands (`image_position: in_place`, prepended when a text with an
   image has none) or moved to the front followed by a newline (`first_line`, LLaVA's `preprocess_multimodal`).
   A placeholder without an image (MMEB-train WebQA queries) is rendered by `placeholder_without_image`:
   `image_token` (the family token as an ordinary token, VLM2Vec v1 and Gen2Embed), `literal` (kept as text,
   LLaVE), `strip`, or `error`; unset = the family's default.
2. Chat prompts (`chat: true`) wrap the text in the family's chat layout with the `system` turn, add the query
   suffix on the query side (Gen2Embed's "\\nRepresent the given text/image in one word." for an image,
   "\\nRepresent the given text in one word." without one) and close with `assistant` when set (LLaVE: "\\n").

`target_as_query` lists eval datasets whose candidates are formatted as queries (Gen2Embed formats the
RefCOCO-Matching candidates with the query prompt, `src/dataset.py:578`); evaluation reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PLACEHOLDER = "<|image_1|>"

HIERARCHICAL_SYSTEM = (
    "Given an image, summarize the provided image in one word. Given only text, describe the text in one word."
)
HIERARCHICAL_QUERY_SUFFIX_IMAGE = "\nRepresent the given text/image in one word."
HIERARCHICAL_QUERY_SUFFIX_TEXT = "\nRepresent the given text in one word."

SIDES = ("query", "target")
IMAGE_LAYOUTS = ("bare", "wrapped")
IMAGE_POSITIONS = ("in_place", "first_line")
PLACEHOLDER_MODES = ("image_token", "literal", "strip", "error")


@dataclass(frozen=True)
class PromptFormat:
    """How texts are wrapped before tokenisation. `chat=False` leaves the MMEB text as it is (placeholder aside)."""

    name: str = "plain"
    chat: bool = False
    system: str | None = None
    query_suffix_image: str = ""
    query_suffix_text: str = ""
    #: Content of a closing assistant turn (None: the generation prompt `<|im_start|>assistant\n` ends the text).
    assistant: str | None = None
    #: `bare` | `wrapped` | None (= bare in plain prompts, wrapped in chat prompts).
    image_layout: str | None = None
    image_position: str = "in_place"
    #: `image_token` | `literal` | `strip` | `error` | None (= the family's default).
    placeholder_without_image: str | None = None
    target_as_query: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for name, value, allowed in (("image_layout", self.image_layout, (None, *IMAGE_LAYOUTS)),
                                     ("image_position", self.image_position, IMAGE_POSITIONS),
                                     ("placeholder_without_image", self.placeholder_without_image,
                                      (None, *PLACEHOLDER_MODES))):
            if value not in allowed:
                raise ValueError(f"prompt.{name} must be one of {[a for a in allowed if a is not None]} (or null), "
                                 f"got {value!r}")
        if isinstance(self.target_as_query, str) or not all(isinstance(d, str) for d in self.target_as_query):
            raise ValueError(f"prompt.target_as_query must be a list of eval dataset names, got {self.target_as_query!r}")
        object.__setattr__(self, "target_as_query", tuple(self.target_as_query))

    @classmethod
    def plain(cls) -> PromptFormat:
        return cls()

    @classmethod
    def hierarchical(cls) -> PromptFormat:
        # Gen2Embed (src/model_utils.py:244-253): bare image token inside the chat text, query suffix by whether
        # the row has an image, RefCOCO-Matching candidates as queries (src/dataset.py:578).
        return cls(
            name="hierarchical",
            chat=True,
            system=HIERARCHICAL_SYSTEM,
            query_suffix_image=HIERARCHICAL_QUERY_SUFFIX_IMAGE,
            query_suffix_text=HIERARCHICAL_QUERY_SUFFIX_TEXT,
            image_layout="bare",
            target_as_query=("RefCOCO-Matching",),
        )

    @classmethod
    def from_config(cls, cfg) -> PromptFormat:
        """Build from a name ("plain", "hierarchical") or a mapping of the fields."""
        if cfg is None:
            return cls.plain()
        if isinstance(cfg, PromptFormat):
            return cfg
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        cfg = dict(cfg)
        name = cfg.pop("name", "plain")
        presets = {"plain": cls.plain, "hierarchical": cls.hierarchical}
        if name in presets and not cfg:
            return presets[name]()
        base = asdict(presets[name]()) if name in presets else asdict(cls(name=name))
        unknown = set(cfg) - set(base) - {"name"}
        if unknown:
            raise ValueError(f"prompt config has unknown field(s) {sorted(unknown)}; known: {sorted(base)}")
        base.update(cfg)
        base["name"] = name
        targets = base.get("target_as_query")
        if targets is None:
            base["target_as_query"] = ()
        elif not isinstance(targets, str):
            base["target_as_query"] = tuple(targets)  # a string is refused by __post_init__
        return cls(**base)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["target_as_query"] = list(self.target_as_query)
        return out


def image_token_for(prompt: PromptFormat, family) -> str | None:
    layout = prompt.image_layout or ("wrapped" if prompt.chat else "bare")
    return family.chat_image_token if layout == "wrapped" else family.image_token


def replace_placeholder(text: str, has_image: bool, image_token: str | None, position: str = "in_place",
                        without_image: str = "error", stray_ok: bool = True) -> str:
    """Put `image_token` where the MMEB placeholder is (`in_place`; prepended when a text with an image lacks it)
    or at the front followed by a newline (`first_line`); a placeholder without an image is rendered by
    `without_image` (see the module docstring)."""
    count = text.count(PLACEHOLDER)
    if not has_image:
        if not count:
            return text
        if without_image == "literal":
            return text
        if without_image == "strip":
            return text.replace(PLACEHOLDER, "")
        if without_image == "image_token" and image_token is not None:
            if not stray_ok and image_token:
                raise ValueError("placeholder_without_image=image_token: this backbone family cannot embed an image "
                                 "token in a row without an image; use literal or strip")
            return text.replace(PLACEHOLDER, image_token)
        raise ValueError(f"text contains {PLACEHOLDER} but no image goes with it (prompt.placeholder_without_image="
                         f"{without_image}): {text[:80]!r}")
    if image_token is None:
        raise ValueError("this backbone family takes no images, but an image was given")
    if count > 1:
        raise ValueError(f"text holds {count} image placeholders; one image per text is supported: {text[:80]!r}")
    if position == "first_line":
        # LLaVA llava/train/train.py:384-410 (LLaVE llava/eval/model_embed.py:45-67): a text that does not start
        # with the image token gets it moved to the front, followed by "\n", the rest stripped.
        body = text.replace(PLACEHOLDER, image_token)
        if body.startswith(image_token) and count:
            return body
        return (image_token + "\n" + body.replace(image_token, "", 1).strip()).strip() if image_token else body
    if count == 0:
        return image_token + text
    return text.replace(PLACEHOLDER, image_token)


def format_text(text: str, has_image: bool, side: str, prompt: PromptFormat, family) -> str:
    """The exact string the tokenizer sees for one query or target."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if prompt.chat and not family.has_chat:
        raise ValueError(f"prompt {prompt.name!r} uses a chat layout, but family {family.name!r} has none; "
                         "use prompt=plain")
    body = replace_placeholder(text, has_image, image_token_for(prompt, family), prompt.image_position,
                               prompt.placeholder_without_image or family.placeholder_without_image,
                               stray_ok=family.embeds_stray_image_tokens)
    if not prompt.chat:
        return body
    if side == "query":
        body += prompt.query_suffix_image if has_image else prompt.query_suffix_text
    if prompt.assistant is None:
        return family.chat(prompt.system, body)
    return family.chat(prompt.system, body, assistant=prompt.assistant)
