"""
The dataset registry. FIXED: experiments never edit this file.

Each entry says where a dataset's text comes from and the settings the model
sees (vocabulary size, sequence length, how many validation tokens the metric
reads). prepare.py turns an entry into a verified cache; train.py and
train_mlx.py only ever see the cache through prepare.py's API.

    climbmix      karpathy/climbmix-400b-shuffle on the Hugging Face hub (the original)
    tinystories   karpathy/tinystories-gpt4-clean on the hub (small, low entropy)
    classics      Jane Austen's novels, shipped in datasets/classics/ (offline)
    local:<path>  your own .txt / .jsonl / .parquet files

Every split is a list of (file, first_row, stop_row) slices of parquet files
with a `text` column, so the dataloader reads every dataset the same way.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class DataSource:
    name: str
    description: str
    vocab_size: int            # including the reserved special tokens
    max_seq_len: int           # context length the metric is measured at
    eval_tokens: int           # validation tokens evaluate_bpb reads
    tokenizer_max_chars: int   # training text the BPE tokenizer sees
    hub_repo: str = ""         # "owner/name" of a Hugging Face dataset, if downloaded
    default_num_shards: int = 0
    embedded_dir: str = ""     # a folder of this repo holding the shards, if embedded
    local_path: str = ""       # a person's corpus, for local:<path>
    extra: dict = field(default_factory=dict)

    @property
    def is_local(self):
        return bool(self.local_path)

    def url(self, filename):
        """Download address; HF_ENDPOINT points it at a mirror (or a test server)."""
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/")
        return f"{endpoint}/datasets/{self.hub_repo}/resolve/main/{filename}"

    def splits(self, num_shards=None):
        """{"train": [(file, first_row, stop_row)], "val": [...]}; stop_row None = to the end."""
        n = num_shards or self.default_num_shards
        if self.name == "climbmix":
            # Validation is pinned to the last shard, as in the original autoresearch.
            val = self.extra["max_shard"]
            train = [shard_name(i) for i in range(min(n, val))]
            return {"train": [(f, 0, None) for f in train], "val": [(shard_name(val), 0, None)]}
        if self.name == "tinystories":
            # One file; its first rows are the fixed validation stories.
            f, v = self.extra["filename"], self.extra["val_rows"]
            return {"train": [(f, v, None)], "val": [(f, 0, v)]}
        if self.embedded_dir:
            files = sorted(f for f in os.listdir(self.embedded_dir) if f.endswith(".parquet"))
            return {"train": [(f, 0, None) for f in files[:-1]], "val": [(files[-1], 0, None)]}
        raise ValueError(f"{self.name}: splits of a local corpus are made by prepare.py")

    def downloads(self, num_shards=None):
        """The files to fetch from the hub (empty for embedded and local datasets)."""
        if not self.hub_repo:
            return []
        parts = self.splits(num_shards)
        return sorted({f for split in parts.values() for f, _, _ in split})


def shard_name(index):
    return f"shard_{index:05d}.parquet"


REGISTRY = {
    "climbmix": DataSource(
        name="climbmix",
        description="ClimbMix 400B, pre-shuffled web text (the original autoresearch data)",
        vocab_size=8192,
        max_seq_len=2048,
        eval_tokens=40 * 524288,
        tokenizer_max_chars=1_000_000_000,
        hub_repo="karpathy/climbmix-400b-shuffle",
        default_num_shards=10,
        extra={"max_shard": 6542},
    ),
    "tinystories": DataSource(
        name="tinystories",
        description="TinyStories, GPT-4 generated and cleaned: narrow, low-entropy English",
        vocab_size=4096,
        max_seq_len=512,
        eval_tokens=2**20,
        tokenizer_max_chars=200_000_000,
        hub_repo="karpathy/tinystories-gpt4-clean",
        default_num_shards=1,
        extra={"filename": "tinystories_gpt4_clean.parquet", "val_rows": 10_000},
    ),
    "classics": DataSource(
        name="classics",
        description="Jane Austen's six novels, embedded in the repo (offline, ~4 MB)",
        vocab_size=4096,
        max_seq_len=256,
        # Reads ~2/3 of the held-out documents (packing crops the rest) without repeating one;
        # a 2-core CPU evaluates it in a few seconds.
        eval_tokens=2**16,
        tokenizer_max_chars=100_000_000,
        embedded_dir=os.path.join(REPO_DIR, "datasets", "classics"),
    ),
}

# Settings for a person's own corpus (local:<path>).
LOCAL_VOCAB_SIZE = 4096
LOCAL_MAX_SEQ_LEN = 512
LOCAL_EVAL_TOKENS = 2**18        # lowered by prepare.py when the corpus is small
LOCAL_VAL_PERCENT = 10           # documents whose hash falls below this go to validation


def get_source(name):
    """Look up a dataset by name; `local:<path>` makes an entry for that path."""
    if name.startswith("local:"):
        path = os.path.abspath(os.path.expanduser(name[len("local:"):]))
        if not name[len("local:"):]:
            raise ValueError("local: needs a path, e.g. --dataset local:~/my_corpus")
        return DataSource(
            name=local_cache_name(path),
            description=f"local corpus at {path}",
            vocab_size=LOCAL_VOCAB_SIZE,
            max_seq_len=LOCAL_MAX_SEQ_LEN,
            eval_tokens=LOCAL_EVAL_TOKENS,
            tokenizer_max_chars=1_000_000_000,
            local_path=path,
        )
    if name not in REGISTRY:
        known = ", ".join(list(REGISTRY) + ["local:<path>"])
        raise ValueError(f"unknown dataset {name!r}; choose one of: {known}")
    return REGISTRY[name]


def local_cache_name(path):
    """A cache folder name for a local corpus: readable, and unique per path."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(path.rstrip("/")) or "corpus")
    return f"local-{base}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------
# Turning raw text into documents

def chunk_paragraphs(text, max_chars):
    """Split text into documents of whole paragraphs, each at most ~max_chars.

    The dataloader crops a document that does not fit the rest of a row and
    drops its tail, so documents much longer than a row waste data. Runs of
    paragraphs sized near one row keep almost every token in play. A single
    paragraph longer than max_chars stays whole (the loader crops it).
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs, current, size = [], [], 0
    for p in paragraphs:
        if current and size + len(p) + 2 > max_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + 2
    if current:
        docs.append("\n\n".join(current))
    return docs


def is_validation(text):
    """Deterministic train/val assignment of a local document, by a hash of its text.

    Independent of file order and of what else is in the corpus, so adding
    files never moves an existing document from train to val or back.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < LOCAL_VAL_PERCENT
