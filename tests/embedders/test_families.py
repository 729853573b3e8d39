"""Backbone families beyond Qwen2-VL on tiny random models of the real architectures, through the real image
processors: LLaVA-OneVision (anyres tiling and `<image>` expansion) and the CLIP / SigLIP dual encoders
(placeholder stripping, fusion, truncation); for every family: normalised embeddings independent of batch mates,
save/load round trip, LoRA outside the vision tower, freeze_vision, configs, and refusal of foreign checkpoints."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from embedders import Embedder
from embedders.backbones import UnknownFamilyError, get_family

FAMILIES = ("llava_onevision", "clip", "siglip", "qwen3_vl")
TINY_CONFIGS = {"llava_onevision": "tiny_llava_ov", "clip": "tiny_clip", "siglip": "tiny_siglip",
                "qwen3_vl": "tiny_qwen3vl"}
HUB_CONFIGS = {
    "llava_ov_0.5b": ("llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
    "llava_ov_7b": ("llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    "aquila_vl_2b": ("llava_onevision", "BAAI/Aquila-VL-2B-llava-qwen"),  # refused until converted (see yaml)
    "clip_vit_l14": ("clip", "openai/clip-vit-large-patch14"),
    "siglip_so400m": ("siglip", "google/siglip-so400m-patch14-384"),
    "qwen25vl_3b": ("qwen2_vl", "Qwen/Qwen2.5-VL-3B-Instruct"),
    "qwen3vl_2b": ("qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct"),
    "qwen3vl_8b": ("qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),
    "qwen3vl_embedding_2b": ("qwen3_vl", "Qwen/Qwen3-VL-Embedding-2B"),
    "qwen3vl_embedding_8b": ("qwen3_vl", "Qwen/Qwen3-VL-Embedding-8B"),
}


def _img(color: str, size=(28, 28)) -> Image.Image:
    """A solid image with a dark square, so that crops of different images differ."""
    im = Image.new("RGB", size, color)
    im.paste((10, 10, 10), (0, 0, max(1, size[0] // 3), max(1, size[1] // 3)))
    return im


#: A mixed batch: image + text, text only, image only (placeholder only), image + text of another shape.
MIXED_TEXTS = ["<|image_1|>\nRepresent the given image.", "a red circle on the left", "<|image_1|>",
               "<|image_1|> a blue square"]
MIXED_IMAGES = [_img("red", (40, 30)), None, _img("blue", (56, 56)), _img("green", (28, 50))]


@pytest.fixture(scope="module")
def tiny():
    """One tiny Embedder per family, built once."""
    built = {}

    def _get(family: str) -> Embedder:
        if family not in built:
            torch.manual_seed(0)
            built[family] = Embedder.build(family, config={})
        return built[family]

    return _get


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """saved(family) -> directory of the tiny Embedder's save_pretrained."""
    dirs = {}

    def _get(family: str):
        if family not in dirs:
            dirs[family] = tiny(family).save_pretrained(tmp_path_factory.mktemp(family) / "emb")
        return dirs[family]

    return _get


# ----------------------------------------------------------------------------- LLaVA-OneVision
def _image_feature_lengths(model, inputs) -> list[int]:
    """Visual features per image as the model computes them (anyres packing, unpadding, newlines)."""
    feats = model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                                     batch_num_images=inputs["batch_num_images"], return_dict=True)
    return [int(f.shape[0]) for f in feats.pooler_output]


def _image_token_counts(embedder, inputs) -> list[int]:
    image_id = embedder.processor.tokenizer.convert_tokens_to_ids("<image>")
    return (inputs["input_ids"] == image_id).sum(1).tolist()


def test_llava_processor_tiles_and_expands_image_tokens(tiny):
    emb = tiny("llava_onevision")
    # (width, height): square base tile; square 2x2 grid; wide 1x2 grid; an odd aspect that needs unpadding
    images = [_img("red", (28, 28)), _img("blue", (56, 56)), _img("green", (56, 28)), _img("white", (60, 22))]
    texts = ["<|image_1|>\nRepresent the given image."] * 4 + ["a red circle"]
    inputs = emb.input_builder(texts, images + [None], "query")
    assert set(inputs) >= {"input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"}
    # one base crop + the grid's tiles, padded to the batch's most crops: 1+1, 1+4, 1+2, ... -> 5 crops of 28 px
    assert inputs["pixel_values"].shape == (4, 5, 3, 28, 28)
    assert inputs["image_sizes"].tolist() == [[28, 28], [56, 56], [28, 56], [22, 60]]
    counts = _image_token_counts(emb, inputs)
    # hand-worked (2x2 features per tile): base 4 + grid features + one newline per grid row
    assert counts[:3] == [4 + 2 * 2 + 2, 4 + 4 * 4 + 4, 4 + 2 * 4 + 2]
    assert counts[4] == 0
    # and the model agrees for every image, the unpadded odd aspect included
    assert counts[:4] == _image_feature_lengths(emb.backbone, inputs)
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[4, 0], "LLaVA-OneVision rows must be left-padded"


def test_llava_anyres_downsampling_matches_model():
    # anyres_max_1: a grid of more than ~1 tile's worth of features is bilinearly downsampled by the model; the
    # processor must predict the downsampled count (4x4 features -> 2x2, 2 newlines, + base 4 = 10)
    torch.manual_seed(0)
    emb = Embedder.build("llava_onevision", config={"vision_aspect_ratio": "anyres_max_1"})
    inputs = emb.input_builder(["<|image_1|> a", "<|image_1|> b"], [_img("red", (56, 56)), _img("blue", (60, 22))],
                               "query")
    counts = _image_token_counts(emb, inputs)
    assert counts[0] == 10
    assert counts == _image_feature_lengths(emb.backbone, inputs)
    assert torch.isfinite(emb(inputs)).all()


def test_llava_text_only_batch_and_chat_layout(tiny):
    emb = tiny("llava_onevision")
    inputs = emb.input_builder(["a red circle", "a blue square on the left"], None, "target")
    assert "pixel_values" not in inputs
    assert torch.isfinite(emb(inputs)).all()
    hier = Embedder(emb.family.name, emb.backbone, emb.processor, prompt="hierarchical")
    text = hier.input_builder.format(["<|image_1|>\nwhat is it"], [_img("red")], "query")[0]
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\n<image>\nwhat is it\nRepresent the given text/image in one word.<|im_end|>" in text


def test_llava_forward_is_fast(tiny):
    import time

    emb = tiny("llava_onevision")
    inputs = emb.input_builder(MIXED_TEXTS * 2, MIXED_IMAGES * 2, "query")
    with torch.no_grad():
        emb(inputs)
        start = time.perf_counter()
        emb(inputs)
    assert time.perf_counter() - start < 2.0  # ~0.01 s on an idle 2-core CPU; generous for loaded machines


# ----------------------------------------------------------------------------- dual encoders
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_dual_encoder_strips_placeholder_and_batches_images(tiny, family):
    emb = tiny(family)
    inputs = emb.input_builder(MIXED_TEXTS, MIXED_IMAGES, "query")
    assert inputs["has_text"].tolist() == [True, True, False, True]
    assert inputs["has_image"].tolist() == [True, False, True, True]
    assert inputs["pixel_values"].shape == (3, 3, 28, 28)  # only the rows that have an image, in order
    # the placeholder is gone: the row tokenises exactly as its text without it
    tok = emb.processor.tokenizer
    alone = emb.input_builder(["\nRepresent the given image."], None, "query")["input_ids"][0]
    assert torch.equal(inputs["input_ids"][0][: len(alone)], alone)
    assert tok.unk_token_id not in inputs["input_ids"][0].tolist()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_dual_encoder_fusion_and_single_modalities(tiny, family):
    emb = tiny(family)
    text, image = "a blue square", _img("blue")
    fused = emb.encode([f"<|image_1|> {text}"], [image])
    text_only = emb.encode([text])
    image_only = emb.encode(["<|image_1|>"], [image])
    expected = torch.nn.functional.normalize(text_only + image_only, dim=-1)
    assert torch.allclose(fused, expected, atol=1e-5)
    # the single-modality embeddings are the model's own projections, normalised
    model = emb.backbone
    with torch.no_grad():
        pixels = emb.processor.image_processor([image], return_tensors="pt")["pixel_values"]
        ref = model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
    assert torch.allclose(image_only, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)


def test_dual_encoder_truncation_and_padding(tiny):
    long_text = " ".join(["a red circle on the left"] * 40)  # 200 words
    clip = tiny("clip").input_builder([long_text, "a"], None, "query")
    tok = tiny("clip").processor.tokenizer
    assert clip["input_ids"].shape == (2, 77)
    assert clip["input_ids"][0, -1] == tok.eos_token_id and clip["input_ids"][0, 0] == tok.bos_token_id
    siglip = tiny("siglip").input_builder(["a", "a red circle"], None, "query")
    assert siglip["input_ids"].shape == (2, 64)  # always the full 64 positions, as SigLIP was trained
    assert tiny("siglip").input_builder([long_text], None, "query")["input_ids"].shape == (1, 64)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_dual_encoder_refusals(tiny, family):
    emb = tiny(family)
    with pytest.raises(ValueError, match="prompt=plain"):
        Embedder(family, emb.backbone, emb.processor, prompt="hierarchical").encode(["a"], [_img("red")])
    with pytest.raises(ValueError, match="own heads"):
        Embedder(family, emb.backbone, emb.processor, pooling="mean").encode(["a red circle"])
    with pytest.raises(ValueError, match="neither text"):
        emb.input_builder(["  ", "a"], None, "query")
    with pytest.raises(ValueError, match="model.image"):
        Embedder.build(family, config={}, image={"max_pixels": 100})


# ----------------------------------------------------------------------------- every new family
@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_normalised_and_independent_of_batch_mates(tiny, family):
    emb = tiny(family)
    both = emb.encode(MIXED_TEXTS, MIXED_IMAGES)
    alone = torch.cat([emb.encode(MIXED_TEXTS[i : i + 1], MIXED_IMAGES[i : i + 1]) for i in range(len(MIXED_TEXTS))])
    assert both.shape[0] == 4 and torch.isfinite(both).all()
    assert torch.allclose(both.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(both, alone, atol=1e-5)
    # distinct inputs give distinct embeddings (nothing collapsed or shared across rows)
    assert torch.cdist(both, both).fill_diagonal_(1.0).min() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload(tiny, saved, family):
    from transformers import AutoModel

    emb = tiny(family)
    again = Embedder.from_pretrained(saved(family))
    assert torch.allclose(emb.encode(MIXED_TEXTS, MIXED_IMAGES), again.encode(MIXED_TEXTS, MIXED_IMAGES), atol=1e-6)
    assert again.family.name == family and again.pooling == emb.pooling
    # an ordinary Hugging Face directory: transformers alone reloads the backbone
    assert type(AutoModel.from_pretrained(saved(family))).__name__ == type(emb.backbone).__name__


def test_saved_llava_processor_names_the_stock_class(saved):
    import json

    # so that the stock AutoProcessor (GPU machines) reloads a directory written without torchvision
    spec = json.loads((saved("llava_onevision") / "processor_config.json").read_text())
    assert spec["processor_class"] == "LlavaOnevisionProcessor"
    assert spec["num_image_tokens"] == 4 and spec["vision_feature_select_strategy"] == "full"


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapts_linear_layers_outside_the_vision_tower(family):
    torch.manual_seed(0)
    emb = Embedder.build(family, config={}, lora={"r": 4})
    tower = get_family(family).vision_module
    adapted = [n for n, _ in emb.backbone.named_modules() if n.endswith("lora_A")]
    assert adapted, "LoRA matched no layer"
    assert not [n for n in adapted if f"{tower}." in n], "LoRA must leave the vision tower alone by default"
    trainable = [n for n, p in emb.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.isfinite(emb.encode(MIXED_TEXTS, MIXED_IMAGES)).all()
    with_vision = Embedder.build(family, config={}, lora={"r": 4, "include_vision": True})
    assert [n for n, _ in with_vision.backbone.named_modules() if n.endswith("lora_A") and f"{tower}." in n]


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_vision_freezes_exactly_the_tower(family):
    emb = Embedder.build(family, config={}, freeze_vision=True)
    tower = get_family(family).vision_module
    frozen = {n for n, p in emb.backbone.named_parameters() if not p.requires_grad}
    in_tower = {n for n, _ in emb.backbone.named_parameters() if n.startswith(f"{tower}.")}
    assert in_tower and frozen == in_tower


@pytest.mark.parametrize("family", FAMILIES)
def test_backward_reaches_text_and_vision_with_checkpointing(family):
    torch.manual_seed(0)
    emb = Embedder.build(family, config={}, gradient_checkpointing=True)
    emb.train()
    emb(emb.input_builder(MIXED_TEXTS, MIXED_IMAGES, "query")).pow(2).sum().backward()
    tower = get_family(family).vision_module
    grads = {n: p.grad for n, p in emb.backbone.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(f"{tower}."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if not n.startswith(f"{tower}."))


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_layer_classes_exist(tiny, family):
    classes = {type(m).__name__ for m in tiny(family).backbone.modules()}
    assert set(get_family(family).decoder_layer_classes) <= classes


# ----------------------------------------------------------------------------- foreign checkpoints
def test_checkpoint_of_another_family_is_refused(saved):
    with pytest.raises(ValueError, match=r"'clip' checkpoint.*family 'llava_onevision'.*model\.family=clip"):
        Embedder.from_pretrained(saved("clip"), family="llava_onevision")
    with pytest.raises(ValueError, match=r"'llava_onevision' checkpoint.*family 'siglip'.*model\.family=llava_onevision"):
        Embedder.from_pretrained(saved("llava_onevision"), family="siglip")
    with pytest.raises(ValueError, match=r"'siglip' checkpoint.*family 'clip'.*model\.family=siglip"):
        Embedder.from_pretrained(saved("siglip"), family="clip")
    # Qwen2-VL's own check names both sides too
    with pytest.raises(ValueError, match=r"'clip' checkpoint.*family 'qwen2_vl'.*belongs to family 'clip'"):
        Embedder.from_pretrained(saved("clip"), family="qwen2_vl")


def test_unknown_family_lists_the_new_ones():
    with pytest.raises(UnknownFamilyError, match="clip.*llava_onevision.*qwen2_vl.*siglip"):
        Embedder.build("internvl9", config={})


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS.values()))
def test_tiny_config_instantiates(compose_cfg, name):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", [f"model={name}"])
    module = instantiate(cfg.model, loss=None, prompt=None)
    assert module.embedder.family.name == cfg.model.family
    out = module.embedder.encode(["<|image_1|>\nRepresent the given image.", "a red circle"], [_img("red"), None])
    assert out.shape[0] == 2 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_hub_config_composes(compose_cfg, name):
    family, path = HUB_CONFIGS[name]
    cfg = compose_cfg("train", [f"model={name}"])
    assert cfg.model.family == family and cfg.model.path == path and cfg.model.config is None
    assert cfg.model._target_ == "embedders.EmbeddingModule" and cfg.model.optimizer._partial_


# ----------------------------------------------------------------------------- model.max_length (every family)
def test_truncate_text_tokens_hand_worked():
    from embedders.backbones.base import truncate_text_tokens

    img = 9
    ids = [1, 2, img, img, img, 3, 4, 5]
    assert truncate_text_tokens(ids, 6, {img}, "right") == [1, 2, img, img, img, 3]
    assert truncate_text_tokens(ids, 4, {img}, "right") == [1, img, img, img]       # text before the image goes too
    assert truncate_text_tokens(ids, 6, {img}, "left") == [img, img, img, 3, 4, 5]
    assert truncate_text_tokens(ids, 8, {img}, "right") == ids
    with pytest.raises(ValueError, match="batch row 3: its image takes 3 tokens, more than model.max_length=2"):
        truncate_text_tokens(ids, 2, {img}, "right", row=3)


LONG = ("a red circle on the left " * 4000)[:100_000]   # a 100,000-character row


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "clip", "text_encoder"])  # siglip: see its own test
def test_max_length_honoured_with_a_100000_character_row(family):
    """Before, Qwen2-VL and LLaVA-OneVision ignored max_length: one such row allocated 15 GB. Now text tokens are cut
    on the tokenizer's truncation side (right, as the references), image tokens never."""
    torch.manual_seed(0)
    emb = Embedder.build(family, config={}, max_length=48)
    takes_images = emb.family.takes_images
    images = [_img("red"), None, None] if takes_images else [None, None, None]
    texts = ["<|image_1|> " + LONG if takes_images else LONG, LONG, "a red circle"]
    inputs = emb.input_builder(texts, images, "query")
    mask = inputs["attention_mask"]
    assert inputs["input_ids"].shape == (3, 48) and mask.sum(1).tolist()[:2] == [48, 48]
    if family in ("qwen2_vl", "llava_onevision"):
        token = "<|image_pad|>" if family == "qwen2_vl" else "<image>"
        image_id = emb.processor.tokenizer.convert_tokens_to_ids(token)
        alone = emb.input_builder(["<|image_1|> a red circle"], [_img("red")], "query")
        n_image = int((alone["input_ids"] == image_id).sum())
        assert int((inputs["input_ids"][0] == image_id).sum()) == n_image > 0   # every image token kept
        # right truncation: row 1 holds the first 48 tokens of the full tokenization
        full = emb.processor.tokenizer(LONG)["input_ids"]
        assert inputs["input_ids"][1][mask[1].bool()].tolist() == full[:48]
    out = emb(inputs)
    assert out.shape[0] == 3 and torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_image_longer_than_max_length_is_refused_naming_the_row(family, tmp_path):
    from datamodules.collate import PairCollator
    from datamodules.errors import DataError
    from datamodules.images import ImageLoader
    from datamodules.schema import Item, TrainPair

    emb = Embedder.build(family, config={}, max_length=3)
    with pytest.raises(ValueError, match=r"batch row 1: its image takes \d+ tokens, more than model.max_length=3"):
        emb.input_builder(["a", "<|image_1|> b"], [None, _img("red")], "query")
    _img("red").save(tmp_path / "x.png")
    pairs = [TrainPair("S", 7, Item("<|image_1|> q", "x.png"), Item("t"))]
    with pytest.raises(DataError, match=r"dataset 'S', row 7, field 'qry_image_path'.*batch row 0: its image takes"):
        PairCollator(emb.input_builder, ImageLoader(tmp_path))(pairs)


# ----------------------------------------------------------------------------- published LoRA/DoRA adapters
@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    """A tiny Qwen2-VL base checkpoint, a DoRA adapter trained on it (saved by peft as VLM2Vec's training does,
    `src/model.py:103-113`), the same adapter with transformers-4.46 module names (`model.layers.*`, the layout of
    the published VLM2Vec/SaHa adapters) and a config.json beside it (as TIGER-Lab/VLM2Vec-Qwen2VL-2B ships), and
    one whose names match nothing."""
    import json

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2VLForConditionalGeneration

    from embedders.backbones.qwen2_vl import tiny_qwen2vl_config
    from embedders.tiny import tiny_qwen_tokenizer

    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration(tiny_qwen2vl_config(tiny_qwen_tokenizer()))
    base.save_pretrained(root / "base")
    proc = Embedder.build("qwen2_vl", config={}).processor
    proc.image_processor.save_pretrained(root / "base")
    proc.tokenizer.save_pretrained(root / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 use_dora=True, init_lora_weights="gaussian"))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    peft_model.save_pretrained(root / "new")
    tensors = load_file(root / "new" / "adapter_model.safetensors")
    config = json.loads((root / "new" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(root / "base")
    variants = {"new": tensors, "old": {k.replace("model.language_model.", "model."): v for k, v in tensors.items()},
                "broken": {k.replace("self_attn", "attention"): v for k, v in tensors.items()}}
    for name, sd in variants.items():
        (root / name).mkdir(exist_ok=True)
        save_file(sd, root / name / "adapter_model.safetensors")
        (root / name / "adapter_config.json").write_text(json.dumps(config))
    (root / "old" / "config.json").write_text((root / "base" / "config.json").read_text())
    # the reference: the peft model itself, unmerged (its language model's last hidden state)
    return root, peft_model.eval()


@pytest.mark.parametrize("variant", ["new", "old"])
def test_published_adapter_is_loaded_completely_and_merged(adapter_dirs, variant):
    root, reference = adapter_dirs
    emb = Embedder.build("qwen2_vl", path=str(root / variant), pooling="last")
    assert not [n for n, _ in emb.backbone.named_parameters() if "lora_" in n]   # merged into plain weights
    inputs = emb.input_builder(["a red circle on the left", "<|image_1|> a blue square"], [None, _img("blue")],
                               "query")
    ours = emb(inputs)
    with torch.no_grad():
        extra = {k: v for k, v in inputs.items() if k not in ("image_rows", "position_ids", "stray_image_tokens")}
        positions = emb.family.rope_positions(emb.backbone, inputs)
        hidden = reference.base_model.model.model(**extra, position_ids=positions).last_hidden_state
    expected = torch.nn.functional.normalize(hidden[:, -1], dim=-1)   # left padding: the last column
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_adapter_that_does_not_fit_is_refused(adapter_dirs):
    root, _ = adapter_dirs
    with pytest.raises(ValueError, match=r"the adapter .*broken did not load completely"):
        Embedder.build("qwen2_vl", path=str(root / "broken"))
