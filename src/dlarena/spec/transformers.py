"""The transformers people train and serve today: BERT's encoder and GPT-2's decoder, one builder each.

Sizes and layouts are the published models' as their reference code builds them (Hugging Face's
``modeling_bert.py`` and ``modeling_gpt2.py``, which load Google's and OpenAI's checkpoints unchanged),
so the parameter counts are theirs to the unit: BERT-base with its pooler 109,482,240 and GPT-2 small
124,439,808. The catalogue (catalogue.py) adds each one's small twin from the same builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlarena.spec.layers import (
    Activation,
    Dense,
    Dropout,
    Embedding,
    Layer,
    LayerNorm,
    MultiHeadSelfAttention,
    PositionEmbedding,
    Residual,
    SelectToken,
    TiedOutput,
    TokenTypeEmbedding,
)
from dlarena.spec.network import Network
from dlarena.spec.recipe import Init, Optimizer, Recipe
from dlarena.spec.workload import Workload

# Both papers initialise every kernel and table from N(0, 0.02) (BERT's initializer_range, GPT-2's
# initializer_range; GPT-1's paper names the 0.02) and start biases at zero, layer norms at one.
INITIALIZER_STD = 0.02
# Dropout everywhere in both (BERT's hidden_dropout_prob and attention_probs_dropout_prob; GPT-2's
# resid_pdrop, embd_pdrop and attn_pdrop).
DROPOUT = 0.1
# Layer-norm epsilons: BERT's layer_norm_eps 1e-12; GPT-2's layer_norm_epsilon 1e-5.
BERT_LAYER_NORM_EPS = 1e-12
GPT2_LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class TransformerSize:
    layers: int
    width: int  # hidden size, d_model
    heads: int
    intermediate: int  # the feed-forward block's inner width
    vocab: int
    positions: int  # learned positions
    steps: int  # the sequence length a cell feeds (at most ``positions``)


def bert(size: TransformerSize, classes: int) -> Network:
    """BERT's encoder (post-layer-norm) with its pooler, then a classifier on the pooled [CLS] token."""
    embeddings: tuple[Layer, ...] = (
        Embedding(size.vocab, size.width), PositionEmbedding(size.positions), TokenTypeEmbedding(2),
        LayerNorm(BERT_LAYER_NORM_EPS), Dropout(DROPOUT),
    )
    block: tuple[Layer, ...] = (
        Residual(body=(MultiHeadSelfAttention(size.heads, dropout=DROPOUT), Dropout(DROPOUT))),
        LayerNorm(BERT_LAYER_NORM_EPS),
        Residual(body=(Dense(size.intermediate), Activation("gelu"), Dense(size.width), Dropout(DROPOUT))),
        LayerNorm(BERT_LAYER_NORM_EPS),
    )
    head: tuple[Layer, ...] = (SelectToken(0), Dense(size.width), Activation("tanh"), Dropout(DROPOUT), Dense(classes))
    return Network(
        input_shape=(size.steps,), input_kind="tokens", vocab=size.vocab, classes=classes,
        layers=(*embeddings, *block * size.layers, *head),
    )


def gpt2(size: TransformerSize) -> Network:
    """GPT-2's decoder (pre-layer-norm, causal attention) with its language-model head tied to the
    token embedding: next-token logits at every step."""
    block: tuple[Layer, ...] = (
        Residual(body=(LayerNorm(GPT2_LAYER_NORM_EPS), MultiHeadSelfAttention(size.heads, causal=True, dropout=DROPOUT),
                       Dropout(DROPOUT))),
        Residual(body=(LayerNorm(GPT2_LAYER_NORM_EPS), Dense(size.intermediate), Activation("gelu_tanh"),
                       Dense(size.width), Dropout(DROPOUT))),
    )
    return Network(
        input_shape=(size.steps,), input_kind="tokens", vocab=size.vocab, classes=size.vocab, label_kind="token",
        layers=(Embedding(size.vocab, size.width), PositionEmbedding(size.positions), Dropout(DROPOUT),
                *block * size.layers, LayerNorm(GPT2_LAYER_NORM_EPS), TiedOutput(size.vocab, tied_to="0")),
    )


BERT_BASE = TransformerSize(layers=12, width=768, heads=12, intermediate=3072, vocab=30522, positions=512, steps=128)
GPT2_SMALL = TransformerSize(layers=12, width=768, heads=12, intermediate=3072, vocab=50257, positions=1024, steps=128)
# The small twins: two blocks of width 64 in 4 heads over a 1,000-word vocabulary and 32 steps, so
# that a CPU training step at batch 8 takes milliseconds and the float64 oracle seconds.
BERT_SMALL = TransformerSize(layers=2, width=64, heads=4, intermediate=256, vocab=1000, positions=64, steps=32)
GPT2_SMALL_TWIN = TransformerSize(layers=2, width=64, heads=4, intermediate=256, vocab=1000, positions=64, steps=32)
SMALL_DESCRIPTION = "2 blocks, width 64, 4 heads, vocabulary 1000, 32 steps"

# Sentence classification as BERT's GLUE fine-tuning (SST-2: two classes).
BERT_CLASSES = 2
# BERT's classifier on the pooled token, which the published 109,482,240 (BertModel) leaves out.
BERT_HEAD_PARAMS = BERT_BASE.width * BERT_CLASSES + BERT_CLASSES

_BERT_CITATION = (
    "Devlin, Chang, Lee, Toutanova 2019, NAACL, arXiv 1810.04805 (BERT-base: L=12, H=768, A=12); "
    "google-research/bert modeling.py and huggingface/transformers models/bert/modeling_bert.py"
)
_GPT2_CITATION = (
    "Radford, Wu, Child, Luan, Amodei, Sutskever 2019, Language Models are Unsupervised Multitask Learners "
    "(the 117M/124M model: 12 layers, 768 wide); openai/gpt-2 src/model.py and huggingface/transformers "
    "models/gpt2/modeling_gpt2.py"
)


def bert_base() -> Workload:
    return Workload(
        name="bert-base", title="BERT-base (sequence classification, 128 tokens)", study="devlin2019",
        citation=_BERT_CITATION, network=bert(BERT_BASE, BERT_CLASSES),
        # The paper's fine-tuning (section A.3): Adam with decoupled weight decay 0.01 (the code's
        # AdamWeightDecayOptimizer), lr among 5e-5, 3e-5, 2e-5 (2e-5 here), batch 32, dropout 0.1; the
        # code's epsilon 1e-6.
        recipe=Recipe(Optimizer("adamw", lr=2e-5, eps=1e-6, weight_decay=0.01), Init("normal", INITIALIZER_STD)),
        default_batch_size=32, published_params=109_482_240, head_params=BERT_HEAD_PARAMS,
        notes=(
            "Token, position (512) and token-type (2) embeddings summed, layer norm, dropout; 12 post-norm"
            " blocks of 12-head self-attention and a 3072-wide feed-forward with the exact (erf) GELU, as"
            " Hugging Face's bert-base-uncased configures it; the pooler (the [CLS] token through Dense 768"
            " and tanh) and a 2-class classifier. 109,482,240 parameters without the classifier, as"
            " published for BertModel; the classifier adds 1,538. Synthetic token ids at sequence length"
            " 128, the token types the first half 0 and the rest 1 (a sentence pair)."
        ),
        quirks_not_copied=(
            "the original TensorFlow code's tanh approximation of GELU (its gelu(); Hugging Face's"
            " checkpoints and this spec use the exact erf form)",
            "the learning-rate warmup over 10% of the steps and linear decay (a step at a constant rate"
            " costs the same)",
            "AdamWeightDecayOptimizer's exclusion of LayerNorm and bias parameters from the decay, and its"
            " missing bias correction (AdamW as torch.optim, optax and Keras implement it)",
            "the attention mask of padded positions (synthetic sequences fill all 128 steps)",
        ),
    )


def gpt2_124m() -> Workload:
    return Workload(
        name="gpt2-124m", title="GPT-2 small (124M, causal language model, 128 tokens)", study="radford2019",
        citation=_GPT2_CITATION, network=gpt2(GPT2_SMALL),
        # GPT-2's paper gives no optimizer; its predecessor's (Radford et al. 2018, GPT-1, section 4.1):
        # Adam at a peak lr 2.5e-4 with weight decay 0.01, N(0, 0.02) init. Batch 8 at 128 tokens: one
        # CPU's worth (the paper trained 512 sequences of 1,024).
        recipe=Recipe(Optimizer("adamw", lr=2.5e-4, weight_decay=0.01), Init("normal", INITIALIZER_STD)),
        default_batch_size=8, published_params=124_439_808,
        notes=(
            "Token and learned position (1,024) embeddings, dropout; 12 pre-norm blocks of causal 12-head"
            " self-attention and a 3072-wide feed-forward with GELU's tanh approximation (GPT-2's gelu);"
            " a final layer norm and logits over the 50,257-word vocabulary through the token embedding's"
            " transposed table (tied: one parameter, 124,439,808 in all as published). Synthetic token ids"
            " at sequence length 128."
        ),
        quirks_not_copied=(
            "the initialisation of the residual projections scaled by 1/sqrt(2 x 12) (a starting point,"
            " not a step's cost)",
            "the cosine learning-rate schedule with warmup of GPT-1's recipe (a step at a constant rate"
            " costs the same)",
            "the 1,024-token context of the paper's training (128 here, so that a CPU step takes seconds)",
        ),
    )
