"""A tiny random Llama causal LM + word-level tokenizer saved to a folder (for fast tests)."""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a of and to in is was by who what where when which capital city france paris germany berlin "
         "wrote novel book author george orwell animal farm question answer passage title cite number "
         "one two three four five six seven eight nine ten river mountain sea king queen war year system user "
         "assistant you are helpful that answers questions using numbered passages given briefly few words "
         "used their numbers square brackets like with").split()
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def make_tiny_lm(folder: Path, *, layers: int = 2, seed: int = 0, chat: bool = True, rope_scaling=None,
                 arch: str = "llama") -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    punct = list("[](),.:?!;'\"-") + [str(i) for i in range(10)]
    vocab = {t: i for i, t in enumerate(specials + punct + list(WORDS))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>")
    if chat:
        fast.chat_template = CHAT
    torch.manual_seed(seed)
    if arch == "llama":
        kw = {}
        if rope_scaling is not None:
            kw["rope_scaling"] = rope_scaling
        cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=4096, rope_theta=10000.0, bos_token_id=2,
                                       eos_token_id=3, pad_token_id=1, tie_word_embeddings=False, **kw)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=len(vocab), n_embd=64, n_layer=layers, n_head=4,
                                      n_positions=1024, bos_token_id=2, eos_token_id=3)
        model = transformers.GPT2LMHeadModel(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def tiny_llama():
    """A random 3-layer Llama (4 query / 2 KV heads, vocab 120), in memory, for KV-reuse mechanics tests."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                   rope_theta=10000.0)
    return transformers.LlamaForCausalLM(cfg).eval()


def rand_ids(n: int, seed: int) -> list[int]:
    """n random token ids of :func:`tiny_llama`'s vocabulary (special ids 0-2 left out)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 120, (n,), generator=g).tolist()
