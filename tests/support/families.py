"""Tiny random-init checkpoints of the families users pick from the Hub, saved in the Hub's own file layout: the
model's config and safetensors weights beside the processor or tokenizer class that family's checkpoints ship with.

Image models are saved with their processors at the Hub's default settings (224 to 600 pixels, with or without a
centre crop): a convnet's run adapts the processor to the 32-pixel test images, a transformer's keeps its size.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers as tf
from conftest import NEGATIVE, POSITIVE

LABELS = {0: "old_0", 1: "old_1", 2: "old_2"}
VIT_LIKE = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 37,
            "image_size": 224, "patch_size": 32}  # transformers take the size they were trained at, as on the Hub
STAGES = {"hidden_sizes": [8, 16, 24], "depths": [1, 1, 1]}


def _image(family: str):
    """(model, processor) of an image family."""
    if family == "vit":
        return tf.ViTForImageClassification(tf.ViTConfig(**VIT_LIKE, id2label=LABELS)), tf.ViTImageProcessor()
    if family == "deit":
        return tf.DeiTForImageClassification(tf.DeiTConfig(**VIT_LIKE, id2label=LABELS)), tf.DeiTImageProcessor()
    if family == "beit":
        config = tf.BeitConfig(**VIT_LIKE, use_relative_position_bias=True, use_mean_pooling=True, id2label=LABELS)
        return tf.BeitForImageClassification(config), tf.BeitImageProcessor()
    if family == "dinov2":
        config = tf.Dinov2Config(**{k: v for k, v in VIT_LIKE.items() if k != "intermediate_size"}, id2label=LABELS)
        return tf.Dinov2ForImageClassification(config), tf.BitImageProcessor(crop_size={"height": 224, "width": 224})
    if family == "swin":
        config = tf.SwinConfig(image_size=224, patch_size=8, embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 2],
                               window_size=7, id2label=LABELS)
        return tf.SwinForImageClassification(config), tf.ViTImageProcessor()
    if family == "convnext":
        return (tf.ConvNextForImageClassification(tf.ConvNextConfig(**STAGES, num_stages=3, id2label=LABELS)),
                tf.ConvNextImageProcessor())
    if family == "convnextv2":
        config = tf.ConvNextV2Config(**STAGES, num_stages=3, id2label=LABELS)
        return (tf.ConvNextV2ForImageClassification(config),
                tf.ConvNextImageProcessor())
    if family == "resnet":  # as microsoft/resnet-50 ships: ConvNeXt's processor, shortest edge 224 with crop_pct
        config = tf.ResNetConfig(embedding_size=8, **STAGES, id2label=LABELS)
        return tf.ResNetForImageClassification(config), tf.ConvNextImageProcessor()
    if family == "regnet":
        config = tf.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48], depths=[1, 1, 1], groups_width=16,
                                 id2label=LABELS)
        return tf.RegNetForImageClassification(config), tf.ConvNextImageProcessor()
    if family == "efficientnet":
        config = tf.EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.2, hidden_dim=128,
                                       id2label=LABELS)
        return tf.EfficientNetForImageClassification(config), tf.EfficientNetImageProcessor()
    if family == "mobilenet_v1":
        config = tf.MobileNetV1Config(image_size=32, depth_multiplier=0.25, id2label=LABELS)
        return tf.MobileNetV1ForImageClassification(config), tf.MobileNetV1ImageProcessor()
    if family == "mobilenet_v2":
        config = tf.MobileNetV2Config(image_size=32, depth_multiplier=0.35, tf_padding=False, id2label=LABELS)
        return tf.MobileNetV2ForImageClassification(config), tf.MobileNetV2ImageProcessor()
    if family == "mobilevit":
        config = tf.MobileViTConfig(image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
                                    num_attention_heads=2, id2label=LABELS)
        # apple/mobilevit-* ship 256 px crops; 128 here, since attention models keep their size (a shorter suite)
        processor = tf.MobileViTImageProcessor(size={"shortest_edge": 144}, crop_size={"height": 128, "width": 128})
        return tf.MobileViTForImageClassification(config), processor
    if family == "poolformer":  # GroupNorm in a convnet
        config = tf.PoolFormerConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], id2label=LABELS)
        return tf.PoolFormerForImageClassification(config), tf.PoolFormerImageProcessor()
    if family == "pvt":  # its config declares num_labels (1000) apart from id2label
        config = tf.PvtConfig(hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2], depths=[1, 1, 1, 1],
                              id2label=LABELS)
        return tf.PvtForImageClassification(config), tf.PvtImageProcessor()
    if family == "siglip":  # its base is `vision_model`, not the `siglip` its base_model_prefix names
        config = tf.SiglipConfig(vision_config=VIT_LIKE, text_config={k: v for k, v in VIT_LIKE.items()
                                                                      if "image" not in k and "patch" not in k})
        config.id2label, config.label2id = LABELS, {v: k for k, v in LABELS.items()}
        return tf.SiglipForImageClassification(config), tf.SiglipImageProcessor()
    raise ValueError(family)


IMAGE_FAMILIES = ["vit", "deit", "beit", "dinov2", "swin", "convnext", "convnextv2", "resnet", "regnet",
                  "efficientnet", "mobilenet_v1", "mobilenet_v2", "mobilevit", "poolformer", "pvt", "siglip"]


# Text encoders are saved the same way (`keep_activations`): with N(0, 0.02) linear layers, BERT's pooler and
# classifier shrink what reaches the logits, and two reviews' logits differed by 1e-5 to 2e-4 (BERT, DistilBERT,
# RoBERTa, DeBERTa-v2, ELECTRA, ALBERT, MPNet; three draws), at the pipeline check's tolerance of a score; now 0.09
# to 0.68.
# Narrow convnets whose random init lets activations vanish (1e-25 after a few blocks: transformers draws
# BatchNorm's scale and the convolutions from N(0, 0.02)), so every image gave the same logits and the pipeline check
# compared constants. Trained networks keep their activations alive; so do these, with BatchNorm at the identity,
# He-initialised convolutions, variance-keeping linear layers (LeViT's blocks are Linear + BatchNorm1d: its two
# images' logits differed by 1e-6; SwiftFormer's by 2e-7, and its row failed in one sweep) and, when saved,
# BatchNorm statistics measured on noise images (`settle_batchnorm`).
VANISHING = {"efficientnet", "mobilenet_v1", "mobilenet_v2", "mobilevit", "levit", "mobilevitv2", "swiftformer"}


def keep_activations(model):
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Conv1d)) or type(module).__name__ == "QuantLinear":
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")  # SqueezeBERT's layers are Conv1d, I-BERT's
            # QuantLinear: at N(0, 0.02) two reviews' scores were 2e-5 apart
    return model


def settle_batchnorm(model, processor):
    """BatchNorm's running statistics measured on noise images, as a trained network's are on its data. At mean 0 and
    variance 1 the tiny EfficientNet's features stayed near 6e-4 and its two images' logits differed by 2e-5 to 8e-4
    (ten draws), within the pipeline check's tolerance of a score (1e-4), so a preprocessing error could pass it;
    settled, 0.06 to 0.23, and every family here 0.045 or more (five draws each)."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(16)]
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for norm in momenta:
        norm.reset_running_stats()
        norm.momentum = None  # the plain average over the batches seen
    with torch.random.fork_rng(), torch.no_grad():  # dropout draws: the tests' random stream stays as it was
        model.train()(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    for norm, momentum in momenta.items():
        norm.momentum = momentum
    return model.eval()


def save_image_checkpoint(folder: Path, family: str) -> Path:
    if family in IMAGE_FAMILIES:
        model, processor = _image(family)
    else:
        from .wider_families import wider_image

        model, processor = wider_image(family)
    model = settle_batchnorm(keep_activations(model), processor) if family in VANISHING else model
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


TEXT_SIZES = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
              "intermediate_size": 37, "max_position_embeddings": 128, "num_labels": 3}


def _text(family: str):
    if family in ("bert", "sentence-transformers"):
        return tf.BertForSequenceClassification(tf.BertConfig(**TEXT_SIZES))
    if family == "distilbert":
        config = tf.DistilBertConfig(vocab_size=30522, dim=32, n_layers=3, n_heads=2, hidden_dim=37,
                                     max_position_embeddings=128, num_labels=3)
        return tf.DistilBertForSequenceClassification(config)
    if family == "roberta":
        return tf.RobertaForSequenceClassification(tf.RobertaConfig(**TEXT_SIZES, pad_token_id=0))
    if family == "xlm-roberta":
        return tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(**TEXT_SIZES, pad_token_id=0))
    if family in ("deberta-v2", "deberta-v3"):
        return tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(**TEXT_SIZES, pooler_hidden_size=32))
    if family == "electra":
        return tf.ElectraForSequenceClassification(tf.ElectraConfig(**TEXT_SIZES, embedding_size=16))
    if family == "albert":
        return tf.AlbertForSequenceClassification(tf.AlbertConfig(**TEXT_SIZES, embedding_size=16))
    if family == "mpnet":
        return tf.MPNetForSequenceClassification(tf.MPNetConfig(**TEXT_SIZES, pad_token_id=0))
    if family == "modernbert":
        config = tf.ModernBertConfig(**TEXT_SIZES, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                                     cls_token_id=101, sep_token_id=102, global_attn_every_n_layers=2,
                                     local_attention=16)
        return tf.ModernBertForSequenceClassification(config)
    raise ValueError(family)


TEXT_FAMILIES = ["bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "deberta-v3", "electra", "albert",
                 "mpnet", "modernbert", "sentence-transformers"]
DECODER_FAMILIES = ["qwen2", "llama", "gpt2"]  # GPT-2: Conv1D layers, not Linear
SEQ2SEQ_FAMILIES = ["bart", "t5"]  # encoder-decoder classifiers: their head reads the decoder's last end-of-text


def save_text_checkpoint(folder: Path, family: str) -> Path:
    """Encoders with the real MiniLM (BERT uncased) tokenizer; the sentence-transformers row also carries the
    `modules.json` and `1_Pooling/config.json` (mean pooling) that such checkpoints ship, the DeBERTa-v3 row a
    SentencePiece `spm.model` and no `tokenizer.json` (`save_spm_tokenizer`). Families outside the matrix come from
    `wider_families`."""
    if family in DECODER_FAMILIES:
        return save_decoder_checkpoint(folder, family)
    if family in SEQ2SEQ_FAMILIES:
        return save_seq2seq_checkpoint(folder, family)
    if family not in TEXT_FAMILIES:
        from .wider_families import save_wider_text_checkpoint

        return save_wider_text_checkpoint(folder, family)
    if family == "deberta-v3":
        vocab_size = save_spm_tokenizer(folder)
        model = keep_activations(_text(family))
        model.resize_token_embeddings(vocab_size)
        model.config.pad_token_id = 0
        model.save_pretrained(folder)
        return folder
    keep_activations(_text(family)).save_pretrained(folder)
    minilm_tokenizer().save_pretrained(folder)
    if family == "sentence-transformers":
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return folder


def masked_lm_checkpoint(folder, drop: str = "") -> Path:
    """A BERT saved as a masked LM, as domain-adapted checkpoints are: no pooler weights (nor those named `drop`)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    config = tf.BertConfig(**{k: v for k, v in TEXT_SIZES.items() if k != "num_labels"})
    keep_activations(tf.BertForMaskedLM(config)).save_pretrained(folder)  # N(0, 0.02): reviews' scores 6e-6 apart
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not (drop and drop in k)}, folder / "model.safetensors",
              metadata={"format": "pt"})
    minilm_tokenizer().save_pretrained(folder)
    return folder


def save_spm_tokenizer(folder: Path) -> int:
    """The tokenizer files of `microsoft/deberta-v3-*` as the Hub ships them: a SentencePiece `spm.model` (trained
    here on the test texts, with v3's ids: [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3) and a `tokenizer_config.json`, no
    `tokenizer.json`, so loading it converts the model file (which needs `sentencepiece`). Returns the vocabulary
    size."""
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    corpus = "\n".join((POSITIVE + NEGATIVE) * 4)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()), model_prefix=str(folder / "spm"), vocab_size=64,
        hard_vocab_limit=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", user_defined_symbols=["[MASK]"], minloglevel=2)
    (folder / "spm.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "spm.model")).get_piece_size()


def minilm_tokenizer():
    from hftransfer import zoo

    return tf.AutoTokenizer.from_pretrained(zoo.prepare("all-MiniLM-L6-v2"))


def seq2seq_tokenizer(family: str):
    """A byte-level BPE tokenizer that ends each text with `</s>`, as BART's and T5's do (their heads read the
    decoder's state at the last `</s>`); ids: <pad> 0, </s> 1, <s> 2."""
    from tokenizers import ByteLevelBPETokenizer, processors

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((POSITIVE + NEGATIVE) * 4, vocab_size=300, special_tokens=["<pad>", "</s>", "<s>"])
    template = "$A </s>" if family == "t5" else "<s> $A </s>"
    bpe._tokenizer.post_processor = processors.TemplateProcessing(
        single=template, pair=f"{template} $B </s>", special_tokens=[("</s>", 1), ("<s>", 2)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="</s>",
                                      bos_token="<s>", model_max_length=128)


SEQ2SEQ_IDS = {"pad_token_id": 0, "eos_token_id": 1, "num_labels": 2}


def save_seq2seq_checkpoint(folder: Path, family: str) -> Path:
    """A tiny BART or T5 classifier with its kind of tokenizer (`seq2seq_tokenizer`)."""
    tokenizer = seq2seq_tokenizer(family)
    ids = {"vocab_size": len(tokenizer), **SEQ2SEQ_IDS}
    if family == "bart":
        config = tf.BartConfig(**ids, bos_token_id=2, decoder_start_token_id=1, d_model=32, encoder_layers=2,
                               decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=128)
        model = tf.BartForSequenceClassification(config)
    elif family == "t5":
        config = tf.T5Config(**ids, decoder_start_token_id=0, d_model=32, d_kv=16, d_ff=37, num_layers=2,
                             num_decoder_layers=2, num_heads=2)
        model = tf.T5ForSequenceClassification(config)
    else:
        raise ValueError(family)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def decoder_tokenizer():
    """A byte-level BPE tokenizer that, as decoder LMs ship, has an end-of-text token and no padding token."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((POSITIVE + NEGATIVE) * 4, vocab_size=300, special_tokens=["<|endoftext|>"])
    return tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                      model_max_length=128)


def save_decoder_checkpoint(folder: Path, family: str = "qwen2") -> Path:
    """A tiny decoder classifier with `decoder_tokenizer`."""
    tokenizer = decoder_tokenizer()
    sizes = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128,
             "eos_token_id": tokenizer.eos_token_id, "num_labels": 2}
    if family == "qwen2":
        model = tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**sizes))
    elif family == "llama":
        model = tf.LlamaForSequenceClassification(tf.LlamaConfig(**sizes))
    elif family == "gpt2":
        config = tf.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=2, n_positions=128,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, num_labels=2)
        model = tf.GPT2ForSequenceClassification(config)
    else:
        raise ValueError(family)
    return save_decoder(folder, model, tokenizer)


def save_decoder(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["pad_token"] = None  # Qwen2's tokenizer class would default to padding with <|endoftext|>
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder
