"""Prompt formatting shared by training and evaluation, so both format identically.

A `PromptFormat` is configuration (`conf/prompt/*.yaml`, mirrored by `PRESETS` here): the family code only supplies
its tokens and chat layout. Steps for one text (with or without an image):

1. The MMEB placeholder `<|image_1|>` becomes the family's image token, in the `image_layout` asked for
   (`wrapped`, the default: the model's own convention, Qwen2-VL `<|vision_start|><|image_pad|><|vision_end|>` as
   its chat template writes it; `bare`: the reference codes' `<|image_pad|>` alone; LLaVA `<image>` either way),
   where the placeholder stands (`image_position: in_place`, prepended when a text with an image has none) or
   moved to the front followed by a newline (`first_line`, LLaVA's `preprocess_multimodal`).
   A placeholder without an image (MMEB-train WebQA queries) is rendered by `placeholder_without_image`:
   `image_token` (the family token as an ordinary token, VLM2Vec v1 and Gen2Embed), `literal` (kept as text,
   LLaVE), `strip`, or `error`; unset = the family's default (`literal`; `strip` for encoders, whose image token
   is nothing).
2. Chat prompts (`chat: true`) wrap the text in the family's chat layout with the `system` turn, add the query
   suffix on the query side (Gen2Embed's "\\nRepresent the given text/image in one word." for an image,
   "\\nRepresent the given text in one word." without one) and close with `assistant` when set (LLaVE: "\\n").

`plain` is the default, in the model's own layout: a model trained with it ships exactly (sentence-transformers and
plain transformers format and position its inputs as embedlab does; `embedders/saving.py`). `vlm2vec`,
`hierarchical` (Gen2Embed) and `llave` reproduce published checkpoints' preprocessing, bare image tokens and stray
placeholder tokens included; where stock loaders cannot follow (Qwen2-VL's bare tokens get other positions there),
the shipped directory's model card says what differs and how to reproduce it.

`target_as_query` lists eval datasets whose candidates are formatted as queries (Gen2Embed formats the
RefCOCO-Matching candidates with the query prompt, `src/dataset.py:578`); evaluation reads it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, field, replace

from datamodules.mmeb_v2_qwen3 import COMPOSITIONS
from datamodules.schema import PLACEHOLDER, VIDEO_PLACEHOLDER

HIERARCHICAL_SYSTEM = (
    "Given an image, summarize the provided image in one word. Given only text, describe the text in one word."
)
HIERARCHICAL_QUERY_SUFFIX_IMAGE = "\nRepresent the given text/image in one word."
HIERARCHICAL_QUERY_SUFFIX_TEXT = "\nRepresent the given text in one word."
LLAVE_SYSTEM = "You are a helpful assistant."
GME_SYSTEM = "You are a helpful assistant."
GME_SUFFIX = "<|endoftext|>"
QWEN3VL_EMBEDDING_SYSTEM = "Represent the user's input."

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
    #: `wrapped` (the model's own image-token convention; null means it too) | `bare`.
    image_layout: str = "wrapped"
    image_position: str = "in_place"
    #: `image_token` | `literal` | `strip` | `error` | None (= the family's default).
    placeholder_without_image: str | None = None
    target_as_query: tuple[str, ...] = field(default_factory=tuple)
    #: Qwen3-VL-Embedding: an item's task instruction (`Item.instruction`) becomes the system message (a final
    #: punctuation mark added) and the user turn holds the visual, then the rest of the text; items without one
    #: keep `system` and their text as it is. Needs `chat`.
    instruction_as_system: bool = False
    #: Whose evaluator the MMEB-V2 items are built as (`datamodules/mmeb_v2_qwen3.py`): `vlm2vec` (VLM2Vec's
    #: instructions, candidates with their target instruction, 8 frames) or `qwen3vl_embedding` (Qwen3-VL-Embedding's
    #: own evaluation code: its instructions, candidates without one, 64 frames, image tasks' instruction apart) or
    #: `gme` (VLM2Vec's parsers for GME: no visual token in the text; `datamodules/mmeb_v2_gme.py`).
    mmeb_v2_composition: str = "vlm2vec"
    #: Text after the whole chat layout (GME: "<|endoftext|>" after the generation prompt, pooled as the last token).
    suffix: str = ""
    #: `middle`: a video is given to the model as one image, the middle one of its sampled frames (VLM2Vec's GME
    #: wrapper, src/model/model.py:79-84); None: as a video.
    video_as_image: str | None = None

    def __post_init__(self):
        if self.image_layout is None:
            object.__setattr__(self, "image_layout", "wrapped")
        for name, value, allowed in (("image_layout", self.image_layout, IMAGE_LAYOUTS),
                                     ("image_position", self.image_position, IMAGE_POSITIONS),
                                     ("placeholder_without_image", self.placeholder_without_image,
                                      (None, *PLACEHOLDER_MODES))):
            if value not in allowed:
                raise ValueError(f"prompt.{name} must be one of {[a for a in allowed if a is not None]} (or null), "
                                 f"got {value!r}")
        if isinstance(self.target_as_query, str) or not all(isinstance(d, str) for d in self.target_as_query):
            raise ValueError(f"prompt.target_as_query must be a list of eval dataset names, got {self.target_as_query!r}")
        object.__setattr__(self, "target_as_query", tuple(self.target_as_query))
        if self.mmeb_v2_composition not in COMPOSITIONS:
            raise ValueError(f"prompt.mmeb_v2_composition must be one of {list(COMPOSITIONS)}, "
                             f"got {self.mmeb_v2_composition!r}")
        if self.video_as_image not in (None, "middle"):
            raise ValueError(f"prompt.video_as_image must be middle or null, got {self.video_as_image!r}")
        if self.suffix and not self.chat:
            raise ValueError("prompt.suffix follows the chat layout; it needs a chat prompt (chat: true)")
        if self.instruction_as_system and not self.chat:
            raise ValueError("prompt.instruction_as_system needs a chat prompt (chat: true): the instruction becomes "
                             "the system message")

    @classmethod
    def plain(cls) -> PromptFormat:
        return PRESETS["plain"]

    @classmethod
    def hierarchical(cls) -> PromptFormat:
        return PRESETS["hierarchical"]

    @classmethod
    def from_config(cls, cfg) -> PromptFormat:
        """Build from a preset name (`PRESETS`: plain, hierarchical, vlm2vec, llave) or a mapping of the fields: a
        preset's name with fields changes those fields of the preset; any other name starts from the defaults."""
        if cfg is None:
            return PRESETS["plain"]
        if isinstance(cfg, PromptFormat):
            return cfg
        if isinstance(cfg, str):
            if cfg not in PRESETS:
                raise ValueError(f"unknown prompt {cfg!r}; presets: {sorted(PRESETS)}. A prompt of your own is a mapping "
                                 "of its fields (a conf/prompt/<name>.yaml, or a dict with `name` and the fields)")
            return PRESETS[cfg]
        cfg = dict(cfg)
        name = cfg.pop("name", "plain")
        base = PRESETS.get(name) or cls(name=name)
        known = set(asdict(base))
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"prompt config has unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        if cfg.get("target_as_query", ()) is None:
            cfg["target_as_query"] = ()
        elif not isinstance(cfg.get("target_as_query", ()), str):
            cfg["target_as_query"] = tuple(cfg.get("target_as_query", ()))  # a string is refused by __post_init__
        return replace(base, **cfg)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["target_as_query"] = list(self.target_as_query)
        if not self.instruction_as_system:  # prompts without it keep the specs (and model fingerprints) they had
            del out["instruction_as_system"]
        if self.mmeb_v2_composition == "vlm2vec":  # likewise
            del out["mmeb_v2_composition"]
        for key in ("suffix", "video_as_image"):  # likewise
            if not out[key]:
                del out[key]
        return out


#: The prompts of conf/prompt/*.yaml (tests/embedders/test_prompts.py checks that each file equals its preset).
PRESETS: dict[str, PromptFormat] = {
    # MMEB texts as they are, in the model's own image-token layout: what stock loaders reproduce.
    "plain": PromptFormat(),
    # Gen2Embed (src/model_utils.py:244-253): bare image token inside the chat text, query suffix by whether the row
    # has an image, a placeholder without an image as the image token (src/dataset.py:591), RefCOCO-Matching
    # candidates as queries (src/dataset.py:578).
    "hierarchical": PromptFormat(name="hierarchical", chat=True, system=HIERARCHICAL_SYSTEM,
                                 query_suffix_image=HIERARCHICAL_QUERY_SUFFIX_IMAGE,
                                 query_suffix_text=HIERARCHICAL_QUERY_SUFFIX_TEXT, image_layout="bare",
                                 placeholder_without_image="image_token", target_as_query=("RefCOCO-Matching",)),
    # VLM2Vec v1 (src/dataset.py:83,130): no chat layout, the bare token wherever the placeholder stands, image or not.
    "vlm2vec": PromptFormat(name="vlm2vec", image_layout="bare", placeholder_without_image="image_token"),
    # LLaVE (llava/train/train.py:384-410, llava/eval/model_embed.py:96-98): Qwen's chat layout with the default
    # system message, image first + newline, a closing assistant turn "\n", text-only rows left as they are.
    "llave": PromptFormat(name="llave", chat=True, system=LLAVE_SYSTEM, assistant="\n", image_layout="bare",
                          image_position="first_line", placeholder_without_image="literal"),
    # Qwen3-VL-Embedding (src/models/qwen3_vl_embedding.py, format_model_input): Qwen's ChatML, the default system
    # message "Represent the user's input." (an item's instruction instead when it has one), the visual before the
    # text, the generation prompt pooled; MMEB-V2 items as its own evaluator builds them.
    "qwen3vl_embedding": PromptFormat(name="qwen3vl_embedding", chat=True, system=QWEN3VL_EMBEDDING_SYSTEM,
                                      instruction_as_system=True, mmeb_v2_composition="qwen3vl_embedding"),
    # GME as VLM2Vec's evaluator runs it (src/model/baseline_backbone/gme/gme_inference.py:115-132): Qwen's ChatML
    # with the system turn "You are a helpful assistant." on both sides, the image (wrapped) before the text,
    # "<|endoftext|>" after the generation prompt; a video as its middle frame (src/model/model.py:79-84);
    # MMEB-V2 items without visual tokens in the text (datamodules/mmeb_v2_gme.py).
    "gme": PromptFormat(name="gme", chat=True, system=GME_SYSTEM, suffix=GME_SUFFIX, video_as_image="middle",
                        mmeb_v2_composition="gme"),
}


def as_model_visual(visual, prompt: PromptFormat):
    """The visual input the model is given: with `video_as_image: middle`, a video clip becomes its middle frame
    (`frames[len // 2]`, VLM2Vec src/model/model.py:82) and a `Visual` describing a video one image."""
    if prompt.video_as_image != "middle":
        return visual
    if isinstance(visual, Visual):
        return Visual(images=visual.images + visual.videos) if visual.videos else visual
    if hasattr(visual, "frames"):
        frames = list(visual.frames)
        if not frames:
            raise ValueError("a video clip without frames cannot be given as its middle frame")
        return frames[len(frames) // 2]
    return visual


def image_token_for(prompt: PromptFormat, family) -> str | None:
    """The family's image token in the prompt's layout (`wrapped` falls back to the bare token for families without
    a wrapped form)."""
    if prompt.image_layout == "wrapped" and family.chat_image_token is not None:
        return family.chat_image_token
    return family.image_token


def placeholder_mode(prompt: PromptFormat, family) -> str:
    """How this prompt renders `<|image_1|>` in a row without an image on this family."""
    return prompt.placeholder_without_image or family.placeholder_without_image


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


@dataclass(frozen=True)
class Visual:
    """What a row's visual input is, for formatting: how many images (pages) and videos."""

    images: int = 0
    videos: int = 0


def describe_visual(visual) -> Visual:
    """None/False (no visual), True or a PIL image (one image), a list of images (pages), a video clip (an object
    with `frames`), or a `Visual` already."""
    if isinstance(visual, Visual):
        return visual
    if visual is None or visual is False:
        return Visual()
    if isinstance(visual, (list, tuple)):
        videos = sum(1 for v in visual if hasattr(v, "frames"))
        return Visual(images=len(visual) - videos, videos=videos)
    if hasattr(visual, "frames"):
        return Visual(videos=1)
    return Visual(images=1)


def video_token_for(prompt: PromptFormat, family) -> str:
    token = family.chat_video_token if prompt.image_layout == "wrapped" and family.chat_video_token else \
        family.video_token
    if not getattr(family, "takes_videos", False) or token is None:
        raise ValueError(f"family {family.name!r} takes no videos; score video datasets with a video family "
                         "(qwen2_vl, qwen3_vl)")
    return token


def _video_body(text: str, token: str) -> str:
    """`<|video_1|>` becomes the family's video token; a text without it gets the token prepended with the
    reference's " " separator (VLM2Vec `process_input_text`: video_token + " " + prompt)."""
    count = text.count(VIDEO_PLACEHOLDER)
    if count > 1:
        raise ValueError(f"text holds {count} video placeholders; one video per item is supported: {text[:80]!r}")
    if count == 0:
        return token + " " + text if text else token
    return text.replace(VIDEO_PLACEHOLDER, token)


def _pages_body(text: str, n: int, token: str) -> str:
    """`<|image_1|>`..`<|image_n|>` become one image token each; a text with none of them gets n tokens prepended."""
    marks = [f"<|image_{k}|>" for k in range(1, n + 1)]
    found = [m for m in marks if m in text]
    if not found:
        return token * n + " " + text if text else token * n
    if len(found) != n or any(text.count(m) != 1 for m in marks):
        raise ValueError(f"an item with {n} images needs the placeholders <|image_1|>..<|image_{n}|> once each (or "
                         f"none): {text[:80]!r}")
    for m in marks:
        text = text.replace(m, token)
    return text


def system_instruction(instruction: str) -> str:
    """Qwen3-VL-Embedding `format_model_input`: the instruction stripped, "." added unless it ends with a
    punctuation mark (Unicode category P*)."""
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction


def split_instruction(text: str, instruction: str) -> str:
    """The text without its instruction: `text` is the reference's composition `[<visual placeholder> ]instruction
    [" " rest]` (VLM2Vec `process_input_text`); returns `rest`."""
    rest = text
    for mark in (VIDEO_PLACEHOLDER, PLACEHOLDER):
        if rest.startswith(mark):
            rest = rest[len(mark):].removeprefix(" ")
    if not rest.startswith(instruction):
        raise ValueError(f"the text does not start with its instruction {instruction[:60]!r} (after a visual "
                         f"placeholder): {text[:80]!r}; an item's `instruction` must be the text's own prefix")
    return rest[len(instruction):].removeprefix(" ")


def _visual_tokens(v: Visual, prompt: PromptFormat, family) -> str:
    """Qwen3-VL-Embedding's user turn order: videos, then images (no separators, the chat template's rendering)."""
    if v.images > max(1, getattr(family, "max_images_per_item", 1)):
        raise ValueError(f"family {family.name!r} takes at most {getattr(family, 'max_images_per_item', 1)} "
                         f"image(s) per item, got {v.images}")
    image = image_token_for(prompt, family) if v.images else ""
    if v.images and image is None:
        raise ValueError("this backbone family takes no images, but an image was given")
    return (video_token_for(prompt, family) if v.videos else "") + image * v.images


def format_text(text: str, visual, side: str, prompt: PromptFormat, family, instruction: str | None = None) -> str:
    """The exact string the tokenizer sees for one query or target. `visual`: the row's visual input or a
    description of it (`describe_visual`; a bool means one image or none). `instruction`: the item's task
    instruction (`Item.instruction`, held inside `text`); only `prompt.instruction_as_system` uses it."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if prompt.chat and not family.has_chat:
        raise ValueError(f"prompt {prompt.name!r} uses a chat layout, but family {family.name!r} has none; "
                         "use prompt=plain")
    v = describe_visual(as_model_visual(visual, prompt))
    has_image = bool(v.images or v.videos)
    if prompt.instruction_as_system and instruction is not None:
        # Qwen3VLEmbedder.format_model_input: system = the instruction; user = videos, images, then the text.
        body = _visual_tokens(v, prompt, family) + split_instruction(text, instruction)
        if side == "query":
            body += prompt.query_suffix_image if has_image else prompt.query_suffix_text
        system = system_instruction(instruction) or prompt.system
        if prompt.assistant is None:
            return family.chat(system, body) + prompt.suffix
        return family.chat(system, body, assistant=prompt.assistant) + prompt.suffix
    if v.videos:
        if v.images:
            raise ValueError("an item with a video and images is not supported; give it one visual input")
        body = _video_body(text, video_token_for(prompt, family))
    elif v.images > 1:
        if getattr(family, "max_images_per_item", 1) < v.images:
            raise ValueError(f"family {family.name!r} takes at most {getattr(family, 'max_images_per_item', 1)} "
                             f"image(s) per item, got {v.images}")
        body = _pages_body(text, v.images, image_token_for(prompt, family))
    else:
        body = replace_placeholder(text, has_image, image_token_for(prompt, family), prompt.image_position,
                                   placeholder_mode(prompt, family), stray_ok=family.embeds_stray_image_tokens)
    if not prompt.chat:
        return body
    if side == "query":
        body += prompt.query_suffix_image if has_image else prompt.query_suffix_text
    if prompt.assistant is None:
        return family.chat(prompt.system, body) + prompt.suffix
    return family.chat(prompt.system, body, assistant=prompt.assistant) + prompt.suffix
