"""
The dataset registry. FIXED: experiments never edit this file.

Each entry says where a dataset's text comes from and the settings the model
sees (vocabulary size, sequence length, how many validation tokens the metric
reads). dataset_cache.py turns an entry into a verified cache; train.py and
train_mlx.py only ever see the cache through prepare.py's API.

    climbmix      karpathy/climbmix-400b-shuffle on the Hugging Face hub (the original)
    tinystories   karpathy/tinystories-gpt4-clean on the hub (small, low entropy)
    classics      Jane Austen's novels, shipped in datasets/classics/ (offline)
    local:<path>  your own .txt / .jsonl / .parquet files

Every split (train, val, test) is a list of (file, first_row, stop_row) slices of parquet files
with a `text` column, so the dataloader reads every dataset the same way.
"""

import hashlib
import os
import re
from dataclasses import dataclass

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
    # Where the text is: exactly one of a hub dataset, a folder of this repo, a local corpus.
    hub_repo: str = ""         # "owner/name" of a Hugging Face dataset, if downloaded
    embedded_dir: str = ""     # a folder of this repo holding the shards, if embedded
    local_path: str = ""       # a person's corpus, for local:<path>
    # How a dataset is split: numbered shards with one pinned for validation and one for
    # test, or one file whose first rows are validation, the next ones test. The test split
    # is the sealed one: no run reads it; it is scored once, at the end of a session.
    val_shard: int = 0         # shard_<val_shard>.parquet is validation...
    test_shard: int = 0        # ...shard_<test_shard>.parquet is test; training takes shards below both
    default_num_shards: int = 0  # training shards fetched unless --num-shards says otherwise
    hub_file: str = ""         # the one file of a single-file hub dataset
    val_rows: int = 0          # its first val_rows rows are validation,
    test_rows: int = 0         # the next test_rows rows test, the rest training

    @property
    def is_local(self):
        return bool(self.local_path)

    def url(self, filename):
        """Download address; HF_ENDPOINT points it at a mirror (or a test server)."""
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/")
        return f"{endpoint}/datasets/{self.hub_repo}/resolve/main/{filename}"

    def splits(self, num_shards=None):
        """{"train": [(file, first_row, stop_row)], "val": [...], "test": [...]}; stop_row
        None = to the end. The three never share a document."""
        if self.val_shard:
            # Validation and test are pinned shards (the last ones), as validation is in the
            # original autoresearch; training takes shards below both, never one of them.
            held = min(self.val_shard, self.test_shard)
            n = min(num_shards or self.default_num_shards or held, held)
            train = [shard_name(i) for i in range(n)]
            return {"train": [(f, 0, None) for f in train], "val": [(shard_name(self.val_shard), 0, None)],
                    "test": [(shard_name(self.test_shard), 0, None)]}
        if self.hub_file:
            held = self.val_rows + self.test_rows
            return {"train": [(self.hub_file, held, None)], "val": [(self.hub_file, 0, self.val_rows)],
                    "test": [(self.hub_file, self.val_rows, held)]}
        raise ValueError(f"{self.name}: splits of a local corpus are made when it is prepared")

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
        val_shard=6542,
        test_shard=6541,
        default_num_shards=10,
    ),
    "tinystories": DataSource(
        name="tinystories",
        description="TinyStories, GPT-4 generated and cleaned: narrow, low-entropy English",
        vocab_size=4096,
        max_seq_len=512,
        eval_tokens=2**20,
        tokenizer_max_chars=200_000_000,
        hub_repo="karpathy/tinystories-gpt4-clean",
        hub_file="tinystories_gpt4_clean.parquet",
        val_rows=10_000,
        test_rows=10_000,
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
        val_shard=4,               # every sixth chapter of each novel
        test_shard=5,              # another sixth, sealed
    ),
}

# Settings for a person's own corpus (local:<path>).
LOCAL_VOCAB_SIZE = 4096
LOCAL_MAX_SEQ_LEN = 512
LOCAL_EVAL_TOKENS = 2**18        # lowered by prepare.py when the corpus is small


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
