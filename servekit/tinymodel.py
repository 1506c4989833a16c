"""Generate the lab model: a tiny random-weight Llama with a trained BPE tokenizer.

No hub access is needed: the tokenizer is trained here on text that ships
with Python, the weights are random (fixed seed). The shape is the smallest
that vLLM's CPU attention kernel accepts (head_dim 64) and that splits over
tensor parallel 2 (4 query heads, 2 KV heads). The completions are gibberish;
the lab proves the serving path, not the model.

    python -m servekit.tinymodel OUTPUT_DIR
"""

from __future__ import annotations

import pydoc
import sys
from pathlib import Path

VOCAB_SIZE = 512
HIDDEN = 256
HEADS = 4  # head_dim = 256 / 4 = 64
KV_HEADS = 2
LAYERS = 2
MAX_POSITIONS = 1024
SEED = 20261126
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


def generate(out: Path) -> Path:
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

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, num_hidden_layers=LAYERS,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m servekit.tinymodel OUTPUT_DIR", file=sys.stderr)
        return 2
    path = generate(Path(args[0]))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
