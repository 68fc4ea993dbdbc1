"""
autoresearch training template, MLX.

    python train_mlx.py      # trains for TIME_BUDGET seconds, evaluates, prints a summary

The MLX twin of train.py: the same model family, optimizer, budget, metric and
outputs, written for Apple Silicon (Metal, unified memory). It also runs on
Linux with `mlx[cpu]`, slowly: there the MLX wheel multiplies matrices with a
reference BLAS, so a system OpenBLAS is used instead when one is installed.

bench.py imports this file as a module to profile it, so keep these names:
DEVICE_BATCH_SIZE, COMPILE, build_model(), build_optimizer(), loss_fn(),
make_train_step(), set_schedule() and main(); and keep the training itself
inside main() (importing must not train).
"""

import time

START_TIME = time.time()  # total_seconds counts from here, imports included

import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from functools import partial  # noqa: E402

if sys.platform.startswith("linux"):
    # MLX's Linux wheel calls cblas_sgemm from a bundled reference BLAS (a few
    # GFLOP/s). Loading an optimized BLAS first, into the global symbol scope,
    # makes MLX bind to it instead (about 40x faster matmuls on a CPU).
    _blas = os.environ.get("AUTORESEARCH_BLAS") or ctypes.util.find_library("openblas")
    try:
        BLAS = _blas and ctypes.CDLL(_blas, mode=ctypes.RTLD_GLOBAL) and _blas
    except OSError:
        BLAS = None
else:
    BLAS = None

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

# ---------------------------------------------------------------------------
# Data, metric and report come from the fixed harness. The dataset is chosen
# outside this file, by AUTORESEARCH_DATASET (the plugin's run-experiment sets it
# from the session; by hand: AUTORESEARCH_DATASET=classics python train_mlx.py;
# default climbmix), and so is the budget, by AUTORESEARCH_TIME_BUDGET.

import prepare  # noqa: E402
from prepare import MAX_SEQ_LEN, SEED, TIME_BUDGET, VOCAB_SIZE  # noqa: E402  (tokens per row, the run's seed, seconds, vocab)

# ---------------------------------------------------------------------------
# Hyperparameters. On Apple Silicon MLX runs on the GPU; elsewhere on the CPU,
# where the model must be small to take enough steps in a few minutes.
# AUTORESEARCH_DEVICE=metal|cpu picks the code by hand. Picked on a machine
# without Metal, the GPU code (its sizes, mx.compile) runs on the CPU: the tests
# use this to run it (at toy size); a real run never needs it.

DEVICE = os.environ.get("AUTORESEARCH_DEVICE") or ("metal" if mx.metal.is_available() else "cpu")
if DEVICE not in ("metal", "cpu"):
    sys.exit(f"AUTORESEARCH_DEVICE={DEVICE}: train_mlx.py runs on metal or cpu (or leave it unset)")
GPU = DEVICE == "metal"                      # the code below: sizes, mx.compile
if not (GPU and mx.metal.is_available()):
    mx.set_default_device(mx.cpu)            # where the arrays live
if GPU:
    DEPTH, WIDTH, HEAD_DIM = 6, 384, 64
    DEVICE_BATCH_TOKENS = 2**15   # tokens per optimizer step
else:
    DEPTH, WIDTH, HEAD_DIM = 2, 128, 64
    DEVICE_BATCH_TOKENS = 2**11

WINDOW_PATTERN = "SSSL"   # per layer, repeated: S = local window, L = full context
SHORT_WINDOW = MAX_SEQ_LEN // 2
LOGIT_SOFTCAP = 15.0

# Optimizer: Muon for the block matrices, AdamW for the rest; AdamW rates are
# scaled by dmodel_scale(WIDTH) = (WIDTH / 768) ** -0.5 (see train.py for the reasoning).
MATRIX_LR = 0.04
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
SCALAR_LR = 0.5
ADAM_BETAS = (0.8, 0.95)
WEIGHT_DECAY = 0.0
MUON_MOMENTUM = (0.85, 0.95, 300)

WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0

# mx.compile the whole training step (forward, backward, update). On Metal it
# fuses kernels and pays off at once; on a Linux CPU it builds C++ kernels with
# the system compiler (~40 s on 2 cores) for ~10% speed, so it is off there.
COMPILE = GPU
WARMUP_STEPS = 2 if COMPILE else 0  # first steps (tracing and compiling) not counted in the budget
LOSS_LIMIT = 3 * math.log(VOCAB_SIZE)

DEVICE_BATCH_SIZE = max(1, DEVICE_BATCH_TOKENS // MAX_SEQ_LEN)

mx.random.seed(SEED)

# ---------------------------------------------------------------------------
# The model (same family as train.py): pre-norm blocks with weightless RMSNorm,
# rotary embeddings, QK-norm, ReLU^2 MLP, value embeddings on alternate layers,
# sliding-window layers, soft-capped logits, untied output head. The mx.fast
# kernels do RMSNorm, RoPE and attention in one pass each.

def norm(x):
    return mx.fast.rms_norm(x, None, 1e-6)

def has_value_embedding(layer, depth):
    return layer % 2 == (depth - 1) % 2

def window_mask(T, window):
    """None for full causal attention, else a boolean (T, T) mask: attend to the last `window` positions."""
    if window >= T:
        return None
    i = mx.arange(T)
    return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)

def attention_kernels(windows, T):
    """The one line main() prints about attention: which kernel, which windows."""
    short = ", ".join(str(w) for w in sorted({w for w in windows if w < T}))
    return "attention: mx.fast sdpa" + (f" with a mask (sliding window {short}), causal (full context)"
                                        if short else " (causal)")

class Attention(nn.Module):
    def __init__(self, width, head_dim, window):
        super().__init__()
        self.n_head, self.head_dim, self.window = width // head_dim, head_dim, window
        bound = 3 ** 0.5 * width ** -0.5
        self.qkv = mx.random.uniform(-bound, bound, (3, width, width))  # q, k, v: three matrices for Muon
        self.proj = nn.Linear(width, width, bias=False)
        self.proj.weight = mx.zeros((width, width))

    def __call__(self, x, ve, mask):
        B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        qkv = (x @ self.qkv.reshape(3 * C, C).T).reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                       # (B, H, T, D)
        if ve is not None:
            v = v + ve.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        q = mx.fast.rope(norm(q), D, traditional=False, base=10000.0, scale=1.0, offset=0)
        k = mx.fast.rope(norm(k), D, traditional=False, base=10000.0, scale=1.0, offset=0)
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=D ** -0.5,
                                                  mask="causal" if mask is None else mask)
        return self.proj(y.transpose(0, 2, 1, 3).reshape(B, T, C))

class ValueEmbedding(nn.Module):
    """A second token embedding, added to the values through a learned per-head gate."""

    def __init__(self, vocab_size, width, n_head):
        super().__init__()
        self.weight = mx.random.normal((vocab_size, width))
        self.gate = mx.full((n_head, 1), 0.5)

    def __call__(self, idx):
        e = self.weight[idx]                                   # (B, T, C)
        return (e.reshape(*e.shape[:-1], *self.gate.shape[:1], -1) * self.gate).reshape(e.shape)

class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=False)
        bound = 3 ** 0.5 * width ** -0.5
        self.fc.weight = mx.random.uniform(-bound, bound, (4 * width, width))
        self.proj = nn.Linear(4 * width, width, bias=False)
        self.proj.weight = mx.zeros((width, 4 * width))

    def __call__(self, x):
        return self.proj(mx.square(nn.relu(self.fc(x))))

class Block(nn.Module):
    def __init__(self, width, head_dim, window):
        super().__init__()
        self.attn = Attention(width, head_dim, window)
        self.mlp = MLP(width)

    def __call__(self, x, ve, mask):
        x = x + self.attn(norm(x), ve, mask)
        return x + self.mlp(norm(x))

class GPT(nn.Module):
    def __init__(self, depth=DEPTH, width=WIDTH, head_dim=HEAD_DIM, vocab_size=VOCAB_SIZE,
                 seq_len=MAX_SEQ_LEN, window_pattern=WINDOW_PATTERN, short_window=SHORT_WINDOW):
        super().__init__()
        assert width % head_dim == 0, "WIDTH must be a multiple of HEAD_DIM"
        self.depth, self.width, self.vocab_size, self.seq_len = depth, width, vocab_size, seq_len
        pattern = (window_pattern * depth)[:depth]
        self.windows = [short_window if c == "S" else seq_len for c in pattern[:-1]] + [seq_len]
        self.wte = nn.Embedding(vocab_size, width)
        self.wte.weight = mx.random.normal((vocab_size, width))
        # dict keys must not be digits: MLX would read "1" as a list index
        self.value_embeds = {f"layer{i}": ValueEmbedding(vocab_size, width, width // head_dim)
                             for i in range(depth) if has_value_embedding(i, depth)}
        self.blocks = [Block(width, head_dim, self.windows[i]) for i in range(depth)]
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = 0.001 * mx.random.normal((vocab_size, width))

    def __call__(self, idx, targets):
        """Per-token cross-entropy in nats, shape (B, T)."""
        T = idx.shape[1]
        x = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[f"layer{i}"](idx) if f"layer{i}" in self.value_embeds else None
            x = block(x, ve, window_mask(T, self.windows[i]))
        logits = self.lm_head(norm(x)).astype(mx.float32)
        logits = LOGIT_SOFTCAP * mx.tanh(logits / LOGIT_SOFTCAP)
        return nn.losses.cross_entropy(logits, targets, reduction="none")

    def num_params(self):
        return sum(v.size for _, v in tree_flatten(self.parameters()))

    def flops_per_token(self):
        """Training FLOPs per token: 6 per matmul weight + attention over the visible positions."""
        matmul = sum(v.size for _, v in tree_flatten(self.blocks[0].parameters()) if v.ndim >= 2) * self.depth
        matmul += self.lm_head.weight.size
        attn = sum(12 * self.width * sum(min(t + 1, w) for t in range(self.seq_len)) / self.seq_len
                   for w in self.windows)
        return 6 * matmul + attn

def build_model():
    model = GPT()
    mx.eval(model.parameters())
    return model

def loss_fn(model, x, y):
    return model(x, y).mean()

# ---------------------------------------------------------------------------
# Optimizer: Muon (momentum, then the nearest orthogonal matrix via Newton-Schulz)
# for the block matrices, AdamW for embeddings, head and scalars.

def orthogonalize(G, steps=5):
    a, b, c = 3.4445, -4.7750, 2.0315
    wide = G.shape[-2] <= G.shape[-1]
    X = G if wide else mx.swapaxes(G, -1, -2)
    X = X / (mx.sqrt(mx.sum(X * X, axis=(-2, -1), keepdims=True)) + 1e-7)
    for _ in range(steps):
        A = X @ mx.swapaxes(X, -1, -2)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X if wide else mx.swapaxes(X, -1, -2)

class Muon(optim.Optimizer):
    """Muon over the last two axes (a (3, C, C) qkv tensor is three matrices),
    decoupled weight decay, and the step scaled up for tall matrices."""

    def __init__(self, learning_rate, momentum, weight_decay):
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.state["momentum"] = mx.array(momentum)   # in the state, so a compiled step sees changes
        self.weight_decay = weight_decay

    def init_single(self, parameter, state):
        state["buf"] = mx.zeros_like(parameter)

    def apply_single(self, gradient, parameter, state):
        mu = self.state["momentum"]
        buf = mu * state["buf"] + (1 - mu) * gradient
        state["buf"] = buf
        update = orthogonalize((1 - mu) * gradient + mu * buf)   # Nesterov
        rows, cols = parameter.shape[-2:]
        lr = self.learning_rate * max(1.0, rows / cols) ** 0.5
        return parameter * (1 - self.learning_rate * self.weight_decay) - lr * update

def dmodel_scale(width):
    """The factor on the AdamW rates: they are tuned at width 768."""
    return (width / 768) ** -0.5

def build_optimizer(model):
    scale = dmodel_scale(model.width)
    def adamw(lr):
        return optim.AdamW(learning_rate=lr, betas=list(ADAM_BETAS), eps=1e-10, weight_decay=0.0)
    parts = [  # (optimizer, which parameters); the last takes the rest
        (Muon(MATRIX_LR, MUON_MOMENTUM[1], WEIGHT_DECAY), lambda path, p: path.startswith("blocks") and p.ndim >= 2),
        (adamw(EMBEDDING_LR * scale), lambda path, p: path.startswith("wte") or
         (path.startswith("value_embeds") and path.endswith(".weight"))),
        (adamw(UNEMBEDDING_LR * scale), lambda path, p: path.startswith("lm_head")),
        (adamw(SCALAR_LR * scale), None),
    ]
    opt = optim.MultiOptimizer([o for o, _ in parts], [f for _, f in parts[:-1]])
    opt.base_lrs = [float(o.learning_rate) for o, _ in parts]
    opt.init(model.trainable_parameters())
    return opt

def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = max(0.0, (1.0 - progress) / WARMDOWN_RATIO)
    return frac + (1 - frac) * FINAL_LR_FRAC

def set_schedule(opt, progress, step):
    lrm = lr_multiplier(progress)
    for o, base in zip(opt.optimizers, opt.base_lrs):
        o.learning_rate = base * lrm
    lo, hi, n = MUON_MOMENTUM
    opt.optimizers[0].state["momentum"] = mx.array(lo + (hi - lo) * min(1.0, step / n))
    return lrm

def make_train_step(model, opt):
    """One optimizer step as one function; compiled, MLX fuses the elementwise
    work and reuses the traced graph every step."""
    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        return loss

    if COMPILE:
        state = [model.state, opt.state, mx.random.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    return step

# ---------------------------------------------------------------------------
# What the report needs from MLX: the device, and its peak memory.

def device_info():
    return dict(device_type="metal" if mx.default_device().type == mx.gpu else "cpu", **prepare.host_info(),
                peak_flops=None, peak_flops_note="peak unknown for this device: MFU not reported",
                blas=BLAS or ("Accelerate" if sys.platform == "darwin" else "bundled reference BLAS"))

def peak_memory_mb():
    return mx.get_peak_memory() / 2**20 or prepare.peak_rss_mb()

# ---------------------------------------------------------------------------
# Training.

def main():
    tokenizer = prepare.Tokenizer.load()
    model = build_model()
    if GPU and mx.default_device().type != mx.gpu:
        print("code: metal (AUTORESEARCH_DEVICE), arrays on the cpu: no Metal here", flush=True)
    print(attention_kernels(model.windows, MAX_SEQ_LEN), flush=True)
    opt = build_optimizer(model)
    train_step = make_train_step(model, opt)
    # The harness prints and records the run (progress, summary block,
    # data/last_run.json) and aborts it on a NaN or exploding loss.
    report = prepare.RunReport(
        __file__, f"mlx {mx.__version__}", device_info(),
        model=dict(depth=DEPTH, width=WIDTH, head_dim=HEAD_DIM, n_head=WIDTH // HEAD_DIM,
                   num_params=model.num_params(), vocab_size=VOCAB_SIZE, seq_len=MAX_SEQ_LEN,
                   window_pattern=WINDOW_PATTERN, flops_per_token=model.flops_per_token()),
        training=dict(compiled=COMPILE, dtype="fp32", device_batch_size=DEVICE_BATCH_SIZE, grad_accum_steps=1,
                      tokens_per_step=DEVICE_BATCH_SIZE * MAX_SEQ_LEN, warmup_steps=WARMUP_STEPS,
                      dmodel_scale=dmodel_scale(WIDTH)),
        loss_limit=LOSS_LIMIT, start_time=START_TIME)

    loader = prepare.make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
    training_time, step = 0.0, 0
    while True:
        t0 = time.time()
        x, y = (mx.array(a) for a in next(loader))
        progress = min(training_time / TIME_BUDGET, 1.0)
        lrm = set_schedule(opt, progress, step)
        loss = train_step(x, y)
        mx.eval(loss, model.parameters(), opt.state)
        train_loss = loss.item()
        dt = time.time() - t0
        counted = step >= WARMUP_STEPS   # the first steps trace and compile: not counted in the budget
        if counted:
            training_time += dt
        report.step(step, dt, train_loss, counted, training_time, lrm)
        step += 1
        if counted and training_time >= TIME_BUDGET:
            break

    # Evaluation: the same prepare.evaluate_bpb as train.py, fed MLX losses.
    train_peak_mb = peak_memory_mb()   # of training; evaluation allocates its own
    eval_loss = mx.compile(model) if COMPILE else model

    def per_token_loss(xv, yv):
        return np.array(eval_loss(mx.array(xv), mx.array(yv)))

    val_bpb = prepare.evaluate_bpb(per_token_loss, DEVICE_BATCH_SIZE)
    report.finish(val_bpb, training_seconds=training_time, train_peak_mb=train_peak_mb,
                  peak_memory_mb=peak_memory_mb())


if __name__ == "__main__":
    main()
