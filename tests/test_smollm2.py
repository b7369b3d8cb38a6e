"""The embedded SmolLM2-135M-Instruct: tokenizer, logits against an independent numpy forward pass, a chat answer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_jax.io import load_default
from sleep_jax.models.llama import Transformer
from sleep_jax.sampling import Sampler

pytestmark = pytest.mark.slow

QUESTION = [{'role': 'user', 'content': 'What is the capital of France?'}]


@pytest.fixture(scope='module')
def smol():
  return load_default()  # (cfg, params, tokenizer); reads the GGUF once


# ---- numpy reference (independent of sleep_jax.models) -------------------------------------------------
def np_rmsnorm(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_rope(x_LHE, base):
  """Rotate-half RoPE: pairs (x[i], x[i + E/2]) rotate by position * base^(-2i/E)."""
  L, _, E = x_LHE.shape
  ang = np.arange(L, dtype=np.float32)[:, None] * (base ** (-np.arange(0, E, 2, dtype=np.float32) / E))[None]
  c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
  x1, x2 = x_LHE[..., : E // 2], x_LHE[..., E // 2:]
  return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).astype(np.float32)


def np_forward(cfg, p, ids):
  """Float32 Llama forward pass for one sequence: RMSNorm, rotate-half RoPE, causal GQA attention, SwiGLU."""
  L, H, K, E, D = len(ids), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
  x = p['embed'][np.asarray(ids)]                                         # [L, D]
  causal = np.tril(np.ones((L, L), bool))
  for i in range(cfg.n_layers):
    b = p[f'layers_{i}']
    h = np_rmsnorm(x, b['attn_norm']['scale'], cfg.norm_eps)
    q = np_rope((h @ b['attn']['wq'].reshape(D, -1)).reshape(L, H, E), cfg.rope_base)
    k = np_rope((h @ b['attn']['wk'].reshape(D, -1)).reshape(L, K, E), cfg.rope_base)
    v = (h @ b['attn']['wv'].reshape(D, -1)).reshape(L, K, E)
    k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)    # query head h uses kv head h // G
    s = np.einsum('lhe,the->hlt', q, k) / np.sqrt(E)
    s = np.where(causal, s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum('hlt,the->lhe', a, v).reshape(L, H * E)
    x = x + o @ b['attn']['wo'].reshape(H * E, D)
    h = np_rmsnorm(x, b['mlp_norm']['scale'], cfg.norm_eps)
    g = h @ b['mlp']['w_gate']
    x = x + ((g / (1 + np.exp(-g))) * (h @ b['mlp']['w_up'])) @ b['mlp']['w_down']
  x = np_rmsnorm(x, p['final_norm']['scale'], cfg.norm_eps)
  return x @ (p['embed'].T if cfg.tie_embeddings else p['lm_head'])     # [L, V]


# ---- tests ---------------------------------------------------------------------------------------------
def test_config(smol):
  cfg, params, tok = smol
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == \
      (49152, 576, 30, 9, 3, 64, 1536)
  assert cfg.tie_embeddings and cfg.rope_base == 100000.0 and cfg.norm_eps == 1e-5 and cfg.max_seq_len == 8192
  assert params['layers_0']['attn']['wk'].shape == (576, 3, 64) and params['embed'].dtype == np.float32


@pytest.mark.parametrize('text', ['Hello, world!', 'The year 2024 has 365 days; pi=3.14159.',
                                  '  two  spaces,\ttab\nnewline\n\n', 'héllo wörld — 日本語 🙂 ÷', "I'm sure we'll"])
def test_tokenizer_round_trip(smol, text):
  tok = smol[2]
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert all(0 <= i < tok.vocab_size for i in ids)


def test_tokenizer_matches_smollm2(smol):
  tok = smol[2]
  assert tok.vocab_size == 49152 and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  assert tok.stop_ids == (2, 0)                                   # <|im_end|>, <|endoftext|>
  assert tok.encode('Hello world!') == [19556, 905, 17]
  digits = tok.encode('x 2024')                                  # Digits(individual_digits=True): one per digit
  assert [tok.decode([i]) for i in digits] == ['x', ' ', '2', '0', '2', '4']
  assert tok.encode('<|im_start|>user\nhi<|im_end|>') == [1, 4093, 198, 6004, 2]
  text = tok.apply_chat_template(QUESTION)
  assert text.startswith('<|im_start|>') and text.endswith('<|im_start|>assistant\n')
  assert '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n' in text
  assert tok.chat_tokens(QUESTION)[:3] == [1, 9690, 198]         # <|im_start|> system \n


def test_logits_match_numpy_reference(smol):
  cfg, params, tok = smol
  ids = tok.chat_tokens(QUESTION)
  ref_LV = np_forward(cfg, params, ids)
  logits_BLV, _ = jax.jit(lambda p, t: Transformer(cfg).apply({'params': p}, t))(params, jnp.asarray([ids]))
  ours_LV = np.asarray(logits_BLV[0])
  rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
  assert rel(ours_LV[-1], ref_LV[-1]) < 1e-4                   # next-token logits
  assert rel(ours_LV, ref_LV) < 1e-4
  assert tok.decode([int(ref_LV[-1].argmax())]).strip() == 'The'  # the answer starts "The capital of France..."


def test_greedy_chat_answer(smol):
  cfg, params, tok = smol
  sampler = Sampler(Transformer(cfg), cfg, pad_id=tok.pad_id, eos_ids=tok.stop_ids, prompt_buckets=(64,),
                    gen_buckets=(32,))
  out = sampler(params, [tok.chat_tokens(QUESTION)], max_new_tokens=24, rng=jax.random.PRNGKey(0), temperature=0.0)
  answer = tok.decode(out.tokens[0][out.mask[0]])
  assert 'Paris' in answer, answer


# (text, a paraphrase of it, an unrelated sentence): short facts like the passages the main job reads
JUDGE_PAIRS = [
    ('The Orvane bridge is painted teal.', 'The colour of the Orvane bridge is teal.', 'Pelmor was founded in 1602.'),
    ('Marta Velk invented the signal lamp in 1790.', 'The signal lamp was invented by Marta Velk in 1790.',
     'The river freezes every winter.'),
    ('Cats sleep for most of the day.', 'Most of the day, cats are asleep.', 'The train to Oslo leaves at noon.'),
    ('The museum opens at nine in the morning.', 'At 9 a.m. the museum opens its doors.',
     'Copper conducts electricity well.'),
    ('Paris is the capital of France.', 'The capital city of France is Paris.', 'Bananas are rich in potassium.'),
    ('The meeting was moved to Friday.', 'They rescheduled the meeting for Friday.', 'Penguins cannot fly.'),
    ('Water boils at 100 degrees Celsius at sea level.', 'At sea level, water reaches its boiling point at 100 C.',
     'The novel has twelve chapters.'),
    ('Tom bought a red bicycle yesterday.', 'Yesterday Tom purchased a bicycle that is red.',
     'The volcano last erupted in 1911.'),
    ('The village of Dunmore has 300 inhabitants.', 'About 300 people live in the village of Dunmore.',
     'She plays the violin in an orchestra.'),
    ('The company was founded by two brothers.', 'Two brothers started the company.',
     'Mount Everest is the highest mountain.'),
]


def test_the_smollm2_judge_cannot_tell_a_paraphrase_from_an_unrelated_sentence(smol):
  """The judge (r_sem of Knowledge Seeding) on the real weights: SmolLM2-135M-Instruct gives a paraphrase and an
  unrelated sentence the same P(yes) (measured 0.12-0.24 for both, mean gap -0.004; docs/judge.md). This is why
  sleep.ks.gamma defaults to 0. If this test fails the judge has started to work: update docs/judge.md and
  reconsider the default."""
  from sleep_jax.rewards import Judge
  cfg, params, tok = smol
  judge = Judge(Transformer(cfg), tok, prompt_buckets=(128,))
  p = judge(params, [(a, b) for a, b, _ in JUDGE_PAIRS] + [(a, u) for a, _, u in JUDGE_PAIRS])
  para, unrelated = p[:len(JUDGE_PAIRS)], p[len(JUDGE_PAIRS):]
  assert np.all((p > 0.05) & (p < 0.4)), p                   # a real forward pass, answering mostly "no"
  gap = para - unrelated
  assert abs(gap.mean()) < 0.03 and (gap <= 0).sum() >= 3, gap   # no separation: not even on average
