"""Tiny random models + tokenizers trained on the fly, saved as ordinary checkpoint folders.

Used by the reranker and training tests (and usable by the conformance examples): a small
BertForSequenceClassification, a BertModel without a head (an "embedding model"), a small
T5ForConditionalGeneration and a small Llama causal LM, each with a WordLevel tokenizer trained
with the `tokenizers` library and wrapped in PreTrainedTokenizerFast.
"""
from __future__ import annotations

from pathlib import Path

WORDS = ("the cat sat on mat dogs chase cats in park is large a flat piece of fabric used floors parks have "
         "trees grass and benches for visitors sunny day it was what who where when how why does do query "
         "document relevant passage answer yes no true false Yes No Query Document Relevant Passage Answer "
         "Does contain information to the query ? : . , alpha beta gamma delta epsilon zeta eta theta iota "
         "kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega one two three four five "
         "six seven eight nine ten")


def _tokenizer(specials: list[str], post: str, corpus: str = WORDS, lowercase: bool = False, **tok_kw):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token=tok_kw.get("unk_token")))
    if lowercase:
        tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator([corpus], trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    ids = {s: tk.token_to_id(s) for s in specials}
    if post == "bert":
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    elif post == "t5":
        tk.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", ids["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, **tok_kw)


def bert_tokenizer():
    return _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "bert", lowercase=True, unk_token="[UNK]",
                      pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                      model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_bert(folder: Path, *, head: bool = True, num_labels: int = 1, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tok = bert_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512, num_labels=num_labels,
                     pad_token_id=tok.pad_token_id)
    model = (BertForSequenceClassification if head else BertModel)(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if not head:  # looks like a sentence-transformers embedding folder
        (Path(folder) / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", '
                                                   '"type": "sentence_transformers.models.Transformer"}]')
    return Path(folder)


def tiny_t5(folder: Path, *, corpus: str = WORDS, seed: int = 0) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _tokenizer(["<pad>", "</s>", "<unk>"], "t5", corpus=corpus, unk_token="<unk>", pad_token="<pad>",
                     eos_token="</s>")
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id)
    T5ForConditionalGeneration(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer(["<pad>", "<s>", "</s>", "<unk>"], "none", unk_token="<unk>", pad_token="<pad>",
                     bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
