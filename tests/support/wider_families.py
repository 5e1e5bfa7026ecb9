"""Families beyond the matrix's rows, for `make family-sweep` (tests/test_architectures.py with
HFTRANSFER_FAMILY_SWEEP=1): every image and text classifier of transformers a user is likely to pick, each a tiny
random-init checkpoint built from the default config of its model type with its sizes shrunk, saved beside a
tokenizer or image processor of the kind its checkpoints ship.

Left out, and why: Funnel and FNet (their outputs depend on how much padding a batch has, so the pipeline's unpadded
prediction cannot equal the run's padded one, a property of the architectures); DiNAT (needs the `natten` kernels);
ImageGPT and Perceiver (they take no image processor's pixels); models of documents, tables and proteins' special
inputs (LayoutLM, TAPAS, MarkupLM); Jamba and Zamba (Mamba kernels); DeepSeek-V3 and GPT-J (their rotary sizes do
not shrink with the head size).
"""

from __future__ import annotations

from pathlib import Path

import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

from .families import (LABELS, SEQ2SEQ_IDS, decoder_tokenizer, keep_activations, minilm_tokenizer, save_decoder,
                       seq2seq_tokenizer)

WIDER_TEXT = ["camembert", "deberta", "longformer", "big_bird", "xlnet", "mobilebert", "roformer", "convbert", "ernie",
              "squeezebert", "eurobert", "data2vec-text", "megatron-bert", "nomic_bert", "xlm", "rembert", "canine",
              "roberta-prelayernorm", "nystromformer", "ibert", "luke", "esm", "xlm-roberta-xl", "gte"]
WIDER_DECODERS = ["mistral", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "opt", "gpt_neox", "falcon", "qwen3",
                  "smollm3", "olmo2", "olmo3", "bloom", "gpt_neo", "gpt_bigcode", "stablelm", "starcoder2", "mixtral",
                  "qwen2_moe", "qwen3_moe", "gpt_oss", "glm4", "helium", "ministral", "biogpt", "openai-gpt", "mpt",
                  "nemotron", "exaone4"]
WIDER_SEQ2SEQ = ["mbart"]
WIDER_IMAGE = ["swinv2", "cvt", "levit", "pvt_v2", "segformer", "focalnet", "bit", "data2vec-vision", "vit_msn",
               "ijepa", "dinov2_with_registers", "clip", "hiera", "mobilevitv2", "swiftformer", "textnet"]
# Their base is spread over several children beside the head (HGNet V2: `embedder`, `encoder`, then `fc`), with no
# `base_model_prefix` child: a clear error before training
NO_BASE_IMAGE = ["hgnet_v2"]
# Their outputs change with the padding a batch carries (as Funnel's and FNet's; seen once their init let two
# texts' logits differ by more than the check's tolerance): the pipeline's one unpadded text is compared with the
# model on that text alone, not with its row of the run's padded batch
PADDING_DEPENDENT = {"canine", "nystromformer", "convbert"}
# Their blocks hold no Linear, Conv1D or ungrouped Conv2d (grouped Conv1d; I-BERT's QuantLinear): lora is a clear
# error before training
NO_LORA_TARGETS = {"squeezebert", "ibert"}

DROP = object()  # in SHAPES: a setting of SMALL this model type refuses
# Size settings under the names configs use; each applies where the model type's default config has it
SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
         "intermediate_size": 48, "max_position_embeddings": 128, "head_dim": 16, "n_embd": 32, "n_layer": 3,
         "n_head": 2, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37, "num_layers": 3,
         "num_heads": 2, "d_ff": 37, "d_kv": 16, "ffn_dim": 37, "embedding_size": 32, "word_embed_proj_dim": 32,
         "hidden_dim": 37, "dim": 32, "n_layers": 3, "n_heads": 2, "num_decoder_layers": 2}
SHAPES = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1], [["global"], 1]]},
    "xlnet": {"d_inner": 37, "max_position_embeddings": DROP, "d_kv": DROP},
    "falcon": {"head_dim": DROP},  # a property of the config
    "deberta": {"pooler_hidden_size": 32},
    "squeezebert": {"q_groups": 2, "k_groups": 2, "v_groups": 2, "post_attention_groups": 2,
                    "intermediate_groups": 2, "output_groups": 2},
    "swinv2": {"embed_dim": 8, "depths": [2, 2, 2], "num_heads": [1, 2, 2], "window_size": 7, "patch_size": 8},
    "levit": {"hidden_sizes": [16, 32, 48], "num_attention_heads": [1, 2, 3], "depths": [1, 1, 1],
              "key_dim": [8, 8, 8]},
    "pvt_v2": {"hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 1, 2, 2], "depths": [1, 1, 1, 1]},
    "segformer": {"hidden_sizes": [8, 16, 24, 32], "num_attention_heads": [1, 1, 2, 2], "depths": [1, 1, 1, 1]},
    "focalnet": {"embed_dim": 8, "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]},
    "bit": {"embedding_size": 16, "hidden_sizes": [32, 64, 96, 128], "depths": [1, 1, 1, 1], "num_groups": 8},
    "hiera": {"embed_dim": 8, "depths": [1, 1, 2, 1], "num_heads": [1, 1, 2, 2]},
    "mobilevitv2": {"width_multiplier": 0.25},
    "swiftformer": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
    "hgnet_v2": {"stem_channels": [3, 8, 16], "stage_in_channels": [16, 16, 32, 64],
                 "stage_mid_channels": [8, 16, 32, 64], "stage_out_channels": [16, 32, 64, 128],
                 "stage_numb_of_layers": [2, 2, 2, 2], "hidden_sizes": [16, 32, 64, 128]},
}
VIT_SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 37,
             "patch_size": 32}


def _config(model_type: str, sizes: dict):
    default = CONFIG_MAPPING[model_type]()
    settings = {k: v for k, v in sizes.items() if hasattr(default, k)}
    settings.update(SHAPES.get(model_type, {}))
    return CONFIG_MAPPING[model_type](**{k: v for k, v in settings.items() if v is not DROP})


def save_wider_text_checkpoint(folder: Path, family: str) -> Path:
    if family in WIDER_DECODERS:
        tokenizer = decoder_tokenizer()
        ids = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
               "bos_token_id": tokenizer.eos_token_id, "pad_token_id": None}
    elif family in WIDER_SEQ2SEQ:
        tokenizer = seq2seq_tokenizer(family)
        ids = {"vocab_size": len(tokenizer), **SEQ2SEQ_IDS, "bos_token_id": 2, "decoder_start_token_id": 1}
    elif family in WIDER_TEXT:
        tokenizer = minilm_tokenizer()
        if family == "xlnet":  # XLNet reads the last token: its tokenizers pad on the left
            tokenizer.padding_side = "left"
        ids = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id}
    else:
        raise ValueError(family)
    config = _config(family, {**SMALL, **ids})
    config.num_labels = 2
    model = tf.AutoModelForSequenceClassification.from_config(config)
    if family in WIDER_DECODERS:
        return save_decoder(folder, model, tokenizer)
    model = keep_activations(model) if family in WIDER_TEXT else model  # as the matrix's encoders (families.py)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def wider_image(family: str):
    """(model, processor) of an image family outside the matrix."""
    if family not in WIDER_IMAGE + NO_BASE_IMAGE:
        raise ValueError(family)
    if family == "clip":
        config = tf.CLIPConfig(vision_config=VIT_SIZES, text_config={k: v for k, v in VIT_SIZES.items()
                                                                     if k != "patch_size"}, projection_dim=32)
    elif family in ("data2vec-vision", "vit_msn", "ijepa", "dinov2_with_registers"):
        config = _config(family, VIT_SIZES)
    else:
        config = _config(family, {})
    config.id2label, config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    # LeViT's Auto mapping names two classes (with and without distillation): the one a checkpoint loads as
    model_class = tf.LevitForImageClassification if family == "levit" else None
    model = model_class(config) if model_class else tf.AutoModelForImageClassification.from_config(config)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(family) or {"torchvision": "BitImageProcessor"}  # Dinov2's
    return model, getattr(tf, names["torchvision"])()
