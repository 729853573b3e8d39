"""Text encoders (BERT-like, e.g. all-MiniLM-L6-v2): tokenizer + encoder, mean or CLS pooling."""

from __future__ import annotations

from transformers import AutoModel, AutoTokenizer

from ..tiny import tiny_bert_tokenizer
from .base import BackboneFamily, cast_weights, register_family, require_model_type


def tiny_bert_config(tokenizer, overrides: dict | None = None):
    from transformers import BertConfig

    cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=512)
    cfg.update(overrides or {})
    return BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **cfg)


class TextEncoderFamily(BackboneFamily):
    name = "text_encoder"
    takes_images = False
    default_pooling = "mean"
    placeholder_without_image = "strip"
    padding_side = "right"
    lora_target_modules = ("query", "key", "value", "dense")
    decoder_layer_classes = ("BertLayer",)

    def load_model(self, path, config, dtype):
        if path is not None:
            require_model_type(path, self)  # any encoder type not claimed by a multimodal family
            return AutoModel.from_pretrained(path, dtype=dtype)
        from transformers import BertModel

        model = BertModel(tiny_bert_config(tiny_bert_tokenizer(), config), add_pooling_layer=False)
        return cast_weights(model, dtype)

    def load_processor(self, path, config, image):
        if image:
            raise ValueError("model.image options were given, but text encoders take no images")
        if path is None:
            return tiny_bert_tokenizer()
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = self.padding_side
        return tok

    def prepare(self, processor, texts, images, max_length):
        if any(im is not None for im in images):
            raise ValueError("a text encoder was given an image; use a multimodal family or text-only data")
        return dict(processor(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


register_family(TextEncoderFamily())
