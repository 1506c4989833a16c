"""Generate the lab model: a tiny random-weight Llama with a trained BPE tokenizer.

No hub access is needed: the tokenizer is trained here on text that ships
with Python, the weights are random (fixed seed). The shape is the smallest
that vLLM's CPU attention kernel accepts (head_dim 64) and that splits over
tensor parallel 2 (4 query heads, 2 KV heads). The completions are gibberish;
the lab proves the serving path, not the model.

    python -m servekit.lab.tinymodel OUTPUT_DIR
    python -m servekit.lab.tinymodel --preset lab-staging OUTPUT_DIR   # ~300 MB, the staging benchmark's
    python -m servekit.lab.tinymodel --seed 20261127 OUTPUT_DIR        # lab-tiny-b: same shape, other weights

The ``lab-staging`` preset is the same kind of model, larger (hidden 1024, 16 layers, weights in
100 MB shards with an index, as hub models ship): benchmarks/staging.sh stages it to measure
the bytes moved on a first and a second run. The lab generates lab-tiny and lab-tiny-b (the
same shape and tokenizer, another seed: ``SEEDS``), so two deployments' answers can be told apart.
"""

from __future__ import annotations

import argparse
import pydoc
from dataclasses import dataclass
from pathlib import Path

VOCAB_SIZE = 512
HIDDEN = 256
HEADS = 4  # head_dim = 256 / 4 = 64
KV_HEADS = 2
LAYERS = 2
MAX_POSITIONS = 1024


@dataclass(frozen=True)
class Shape:
    hidden: int
    heads: int  # head_dim = hidden / heads: keep it 64
    kv_heads: int  # divisible by tensor parallel 2
    layers: int
    max_shard_size: str | None = None  # save_pretrained's; None: one file


PRESETS = {
    "lab-tiny": Shape(HIDDEN, HEADS, KV_HEADS, LAYERS),  # 2.7 MB
    # 16 layers of hidden 1024 (9.4 M parameters each, bf16): about 300 MB in 4 shards
    "lab-staging": Shape(1024, 16, 8, 16, max_shard_size="100MB"),
}
SEED = 20261126
# The lab's models: lab-tiny and a second one with other weights (issue 21's two deployments).
SEEDS = {"lab-tiny": SEED, "lab-tiny-b": SEED + 1}
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL = [UNK, BOS, EOS]
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _corpus() -> list[str]:
    """English text from the standard library's own documentation."""
    texts = []
    for name in ("os", "json", "argparse", "subprocess", "pathlib", "string", "textwrap", "logging"):
        module = __import__(name)
        texts.append(pydoc.render_doc(module, renderer=pydoc.plaintext))
    return texts


def generate(out: Path, shape: Shape = PRESETS["lab-tiny"], seed: int = SEED) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=shape.hidden, intermediate_size=2 * shape.hidden,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, num_hidden_layers=shape.layers,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    shards = {"max_shard_size": shape.max_shard_size} if shape.max_shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **shards)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servekit.lab.tinymodel",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="lab-tiny",
                        help="model shape (default lab-tiny, the lab's model)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"the weights' random seed (default {SEED}; lab-tiny-b: {SEEDS['lab-tiny-b']})")
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    print(generate(args.output_dir, PRESETS[args.preset], args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
