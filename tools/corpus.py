#!/usr/bin/env python3
"""Plain-text English corpus from Debian's python3.11-doc HTML, split by document into train, validation, held-out.

Source: /usr/share/doc/python3.11/html (package python3.11-doc). The Python documentation is under the PSF License
Agreement (examples and code in it are also under the Zero-Clause BSD licence); see models/tiny-llama/README.md.

What is kept of each page: the text of Sphinx's main body (<div class="body" role="main">), without navigation,
sidebars, footers, "¶" permalinks or pre-formatted code blocks (<div class="highlight...">, <pre>): the corpus is
meant to teach English prose, and inline code such as `str.split()` inside sentences stays. Each block element
(paragraph, heading, list item, table cell, ...) becomes one line; runs of whitespace inside a block collapse to one
space. Index and search pages (genindex*, py-modindex, search) hold no prose and are skipped.

Three disjoint splits by whole document: held-out (HELDOUT_DOCS, only for the perplexity goldens), validation
(every VALIDATION_EVERY-th remaining document, only for choosing the training length) and train (the rest).

Usage: python3 tools/corpus.py [--html DIR] --out .corpus [--tokenizer models/tiny-llama/tokenizer.model]
Writes OUT/train.jsonl and OUT/validation.jsonl (one {"path", "text"} object per document), OUT/heldout.txt (the
held-out documents joined by newlines, as committed under tests/data/perplexity/) and OUT/manifest.json (document
lists, sizes, sha256). With --tokenizer it also trains the Llama-style sentencepiece BPE model on the train split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_HTML = Path("/usr/share/doc/python3.11/html")

# Whole documents reserved for perplexity, never trained on: prose-heavy pages of three different kinds
# (tutorial, HOWTOs, FAQ), together about 150 KB of text.
HELDOUT_DOCS = (
    "tutorial/classes.html",
    "howto/functional.html",
    "howto/logging.html",
    "howto/unicode.html",
    "faq/design.html",
)
MAX_HELDOUT_BYTES = 200_000
VALIDATION_EVERY = 40

# Llama-1/2 tokenizer settings (formats.md R5.1) with a small vocabulary: byte pieces at 3..258, then BPE pieces.
VOCAB_SIZE = 4096
TOKENIZER_OPTIONS = dict(
    model_type="bpe", vocab_size=VOCAB_SIZE, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
    character_coverage=0.9999, max_sentence_length=1 << 16, num_threads=1, minloglevel=2)

SKIPPED_PREFIXES = ("_", "genindex", "py-modindex", "search")
BLOCK_TAGS = frozenset({"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt",
                        "dd", "tr", "td", "th", "table", "blockquote", "br", "figure", "figcaption", "caption",
                        "aside", "hr"})
VOID_TAGS = frozenset({"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "base", "source"})


class _MainTextParser(HTMLParser):
    """Collects the text inside <div role="main">, one line per block element, skipping code and permalinks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, opens main, opens a skipped region)
        self.in_main = 0
        self.skipping = 0
        self.blocks: list[str] = []
        self.current: list[str] = []

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self.current)).strip()
        if text:
            self.blocks.append(text)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            if tag == "br" and self.in_main and not self.skipping:
                self._flush()
            return
        attr = {k: (v or "") for k, v in attrs}
        classes = attr.get("class", "").split()
        opens_main = tag == "div" and attr.get("role") == "main"
        skip = (tag in ("script", "style", "pre") or (tag == "a" and "headerlink" in classes)
                or (tag == "div" and any(c.startswith("highlight") for c in classes)))
        self.stack.append((tag, opens_main, skip))
        self.in_main += opens_main
        self.skipping += skip
        if tag in BLOCK_TAGS and self.in_main and not self.skipping:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        # Pop up to the matching open tag; Sphinx output is well formed, so this only tolerates stray end tags.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for _, opens_main, skip in self.stack[i:]:
                    self.in_main -= opens_main
                    self.skipping -= skip
                del self.stack[i:]
                break
        if tag in BLOCK_TAGS and not self.skipping:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.in_main and not self.skipping:
            self.current.append(data)


def extract_text(html: str) -> str:
    """The main-body prose of one Sphinx page, one block per line (see the module docstring)."""
    parser = _MainTextParser()
    parser.feed(html)
    parser.close()
    parser._flush()
    return "\n".join(parser.blocks)


def list_documents(html_root: Path) -> list[str]:
    """Relative paths of the .html pages that hold documentation prose, sorted."""
    if not html_root.is_dir():
        raise RuntimeError(f"{html_root}: not a directory (install the python3.11-doc package)")
    docs = []
    for path in sorted(html_root.rglob("*.html")):
        rel = path.relative_to(html_root).as_posix()
        if rel.split("/")[0].startswith(SKIPPED_PREFIXES):
            continue
        docs.append(rel)
    return docs


def build(html_root: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, heldout) documents as {"path", "text"} dicts; each document is in exactly one split."""
    docs = list_documents(html_root)
    missing = [d for d in HELDOUT_DOCS if d not in docs]
    if missing:
        raise RuntimeError(f"{html_root}: held-out documents {missing} not found")
    rest, heldout = [], []
    for rel in docs:
        text = extract_text((html_root / rel).read_text(encoding="utf-8"))
        if not text:
            continue
        (heldout if rel in HELDOUT_DOCS else rest).append({"path": rel, "text": text})
    heldout.sort(key=lambda d: HELDOUT_DOCS.index(d["path"]))
    train = [d for i, d in enumerate(rest) if i % VALIDATION_EVERY != VALIDATION_EVERY // 2]
    validation = [d for i, d in enumerate(rest) if i % VALIDATION_EVERY == VALIDATION_EVERY // 2]
    return train, validation, heldout


def heldout_text(heldout: list[dict]) -> str:
    return "\n".join(d["text"] for d in heldout) + "\n"


def read_documents(path: Path) -> list[dict]:
    """Documents of a train.jsonl / validation.jsonl file written by this tool."""
    if not path.is_file():
        raise RuntimeError(f"{path}: not found (run tools/corpus.py --out DIR first)")
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not docs or any(set(d) != {"path", "text"} for d in docs):
        raise RuntimeError(f"{path}: expected one {{\"path\", \"text\"}} object per line")
    return docs


def train_tokenizer(train: list[dict]) -> bytes:
    """Trains the sentencepiece BPE model on the train documents, one block (line) per sentence."""
    import io

    import sentencepiece as spm

    lines = [line for d in train for line in d["text"].split("\n")]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **TOKENIZER_OPTIONS)
    data = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=data)
    if (sp.get_piece_size(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (VOCAB_SIZE, 0, 1, 2):
        raise RuntimeError(f"trained tokenizer: {sp.get_piece_size()} pieces, unk {sp.unk_id()} bos {sp.bos_id()} "
                           f"eos {sp.eos_id()}; expected {VOCAB_SIZE}, 0, 1, 2")
    if sp.id_to_piece(3) != "<0x00>" or sp.id_to_piece(13) != "<0x0A>" or sp.id_to_piece(258) != "<0xFF>":
        raise RuntimeError("trained tokenizer: byte pieces are not at ids 3..258")
    return data


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--html", type=Path, default=DEFAULT_HTML, help="python3.11-doc HTML root")
    ap.add_argument("--out", type=Path, required=True, help="output directory (e.g. .corpus, git-ignored)")
    ap.add_argument("--tokenizer", type=Path, help="also train the tokenizer and write tokenizer.model here")
    args = ap.parse_args(argv)
    train, validation, heldout = build(args.html)
    held = heldout_text(heldout)
    held_bytes = held.encode("utf-8")
    if len(held_bytes) > MAX_HELDOUT_BYTES:
        raise RuntimeError(f"held-out text is {len(held_bytes)} bytes, more than {MAX_HELDOUT_BYTES}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", train), ("validation", validation)):
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    (args.out / "heldout.txt").write_bytes(held_bytes)

    def size(docs: list[dict]) -> int:
        return sum(len(d["text"].encode("utf-8")) + 1 for d in docs)

    manifest = {
        "source": str(args.html), "package": "python3.11-doc",
        "train_documents": [d["path"] for d in train], "validation_documents": [d["path"] for d in validation],
        "heldout_documents": [d["path"] for d in heldout],
        "train_bytes": size(train), "validation_bytes": size(validation), "heldout_bytes": len(held_bytes),
        "heldout_sha256": hashlib.sha256(held_bytes).hexdigest(),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"corpus: {len(train)} train documents ({manifest['train_bytes']} bytes), {len(validation)} validation "
          f"({manifest['validation_bytes']} bytes), {len(heldout)} held-out ({len(held_bytes)} bytes, sha256 "
          f"{manifest['heldout_sha256'][:16]}) -> {args.out}")
    if args.tokenizer:
        data = train_tokenizer(train)
        args.tokenizer.parent.mkdir(parents=True, exist_ok=True)
        args.tokenizer.write_bytes(data)
        print(f"tokenizer: {VOCAB_SIZE} pieces, sha256 {hashlib.sha256(data).hexdigest()[:16]} -> {args.tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
