"""Prompt formatting shared by training and evaluation, so both format identically.

Steps for one text (with or without an image): the MMEB placeholder `<|image_1|>` becomes the
backbone family's image token (prepended when a text with an image has no placeholder); then,
for the hierarchical prompt (METHODS §5, "From Generator to Embedder"), the family's chat
layout with a system prompt, and on the query side only a representation suffix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PLACEHOLDER = "<|image_1|>"

HIERARCHICAL_SYSTEM = (
    "Given an image, summarize the provided image in one word. Given only text, describe the text in one word."
)
HIERARCHICAL_QUERY_SUFFIX_IMAGE = "\nRepresent the given text/image in one word."
HIERARCHICAL_QUERY_SUFFIX_TEXT = "\nRepresent the given text in one word."

SIDES = ("query", "target")


@dataclass(frozen=True)
class PromptFormat:
    """How texts are wrapped before tokenisation. `chat=False` leaves the MMEB text as it is."""

    name: str = "plain"
    chat: bool = False
    system: str | None = None
    query_suffix_image: str = ""
    query_suffix_text: str = ""

    @classmethod
    def plain(cls) -> PromptFormat:
        return cls()

    @classmethod
    def hierarchical(cls) -> PromptFormat:
        return cls(
            name="hierarchical",
            chat=True,
            system=HIERARCHICAL_SYSTEM,
            query_suffix_image=HIERARCHICAL_QUERY_SUFFIX_IMAGE,
            query_suffix_text=HIERARCHICAL_QUERY_SUFFIX_TEXT,
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
        base = asdict(presets[name]()) if name in presets else {"name": name}
        unknown = set(cfg) - set(base) - {"name"}
        if unknown:
            raise ValueError(f"prompt config has unknown field(s) {sorted(unknown)}; known: {sorted(base)}")
        base.update(cfg)
        base["name"] = name
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


def replace_placeholder(text: str, has_image: bool, image_token: str | None) -> str:
    """Replace the MMEB image placeholder by `image_token` (prepend it if a text with an image lacks it)."""
    count = text.count(PLACEHOLDER)
    if not has_image:
        if count:
            raise ValueError(f"text contains {PLACEHOLDER} but no image goes with it: {text[:80]!r}")
        return text
    if image_token is None:
        raise ValueError("this backbone family takes no images, but an image was given")
    if count > 1:
        raise ValueError(f"text holds {count} image placeholders; one image per text is supported: {text[:80]!r}")
    if count == 0:
        return image_token + text
    return text.replace(PLACEHOLDER, image_token)


def format_text(text: str, has_image: bool, side: str, prompt: PromptFormat, family) -> str:
    """The exact string the tokenizer sees for one query or target."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if not prompt.chat:
        return replace_placeholder(text, has_image, family.image_token)
    if not family.has_chat:
        raise ValueError(f"prompt {prompt.name!r} uses a chat layout, but family {family.name!r} has none; "
                         "use prompt=plain")
    body = replace_placeholder(text, has_image, family.chat_image_token)
    if side == "query":
        body += prompt.query_suffix_image if has_image else prompt.query_suffix_text
    return family.chat(prompt.system, body)
