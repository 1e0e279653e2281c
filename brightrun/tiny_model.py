"""A tiny random Llama-architecture model with a locally trained BPE tokenizer.

No hub is reachable here, and the demo and tests must exercise the real path
(HF `from_pretrained`, the chat template, 4-bit NF4 quantization), so the
project builds its own model: 2 layers, hidden size 64, a byte-level BPE
tokenizer trained on the dataset's text, and the Llama 3 chat template.
Needs the `train` extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
]
MARKER = "config.json"


def _texts(dataset: Path) -> Iterator[str]:
    data = json.loads(dataset.read_text(encoding="utf-8"))
    for conversation in data.get("conversations", []):
        for pair in conversation.get("training_pairs", []):
            yield pair.get("system_prompt") or ""
            yield pair.get("current_user_input") or ""
            yield pair.get("target_response") or ""
            for turn in pair.get("conversation_history") or []:
                yield turn.get("content") or ""


def build_tiny_model(
    out_dir: Path,
    dataset: Path,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a loadable model + tokenizer to `out_dir` (atomically: a temp dir renamed)."""
    import shutil
    import tempfile

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)
    try:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_texts(dataset), trainer=trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|finetune_right_pad_id|>",
            model_max_length=2048,
        )
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
        tokenizer.save_pretrained(tmp)

        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_tiny_model(out_dir: Path, dataset: Path) -> Path:
    """Build the tiny model once; later calls reuse it."""
    if (Path(out_dir) / MARKER).exists():
        return Path(out_dir)
    return build_tiny_model(out_dir, dataset)
