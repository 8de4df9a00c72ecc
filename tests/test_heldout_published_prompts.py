"""The held-out suite's prompt lists equal those of mT0's published evaluation.

Source (written out here by hand, independently of tasks/heldout.py): the English-prompt rows of
bigscience-workshop/bigscience @ d51b9bfc98a251725fe73255041b0bca165d2d53,
``evaluation/results/tr13/tzeroeval/evaluate_mt0.slurm``, arrays ``DATASETS_AND_CONFIGS_L1`` and
``DATASETS_AND_CONFIGS_L2`` (rows ``dataset,config,template_config,"prompt",split``; the same names
are in ``tzeroeval/templates.txt``, written by ``get_templates.py``: ``random.sample(k=5)``, seed
42, over all templates of a dataset, no ``original_task`` filter). The results of these runs are
HF ``bigscience/evaluation-results`` (e.g. ``mt0-large-ckpts/evaluation_1010000_l1/
Muennighoff_xwinograd/en`` holds Replace, True_or_False, does_underscore_refer_to, stand_for,
underscore_refer_to; ``.../Muennighoff_xstory_cloze/eu`` holds Answer_Given_options,
Choose_Story_Ending, Generate_Ending, Novel_Correct_Ending, Story_Continuation_and_Options), and the
model card reports the max over them.
"""

import yaml

from tasks import heldout

# dataset: (HF dataset id in the script, L1 configs, L2 configs, split, the five prompt names)
NLI = ("guaranteed/possible/impossible", "MNLI crowdsource", "GPT-3 style", "justified in saying",
       "can we infer")
COPA = ("best_option", "C1 or C2? premise, so/because\u2026", "i_am_hesitating", "cause_effect",
        "plausible_alternatives")
STORY = ("Story Continuation and Options", "Answer Given options", "Novel Correct Ending",
         "Generate Ending", "Choose Story Ending")
WINO = ("underscore refer to", "Replace", "stand for", "does underscore refer to", "True or False")
PUBLISHED = {
    "xnli": ("xnli", {"ar", "en", "es", "fr", "hi", "sw", "ur", "vi", "zh"},
             {"bg", "de", "el", "ru", "th", "tr"}, "validation", NLI),
    "anli": ("anli", {"r1", "r2", "r3"}, set(), "dev_r{n}", NLI),
    "cb": ("super_glue", {"cb"}, set(), "validation", NLI),
    "rte": ("super_glue", {"rte"}, set(), "validation",
            ("MNLI crowdsource", "GPT-3 style", "does it follow that", "should assume",
             "guaranteed true")),
    "copa": ("super_glue", {"copa"}, set(), "validation", COPA),
    "xcopa": ("xcopa", {"id", "sw", "ta", "vi", "zh"}, {"et", "ht", "it", "qu", "th", "tr"},
              "validation", COPA),
    "story_cloze": ("story_cloze", {"2016"}, set(), "validation", STORY),
    "xstory_cloze": ("Muennighoff/xstory_cloze", {"ar", "es", "eu", "id", "hi", "sw", "te", "zh"},
                     {"my", "ru"}, "validation", STORY),
    "winogrande": ("winogrande", {"xl"}, set(), "validation", WINO),
    "xwinograd": ("Muennighoff/xwinograd", {"en", "fr", "pt", "zh"}, {"jp", "ru"}, "test", WINO),
}


def test_suite_prompt_lists_equal_the_published_evaluation():
  assert set(heldout.DATASETS) == set(PUBLISHED)
  for name, (hf_id, l1, l2, split, prompts) in PUBLISHED.items():
    spec = heldout.DATASETS[name]
    assert len(spec.prompts) == 5 and sorted(spec.prompts) == sorted(prompts), name
    assert spec.card_type == hf_id, name
    assert set(spec.configs) == l1 | l2 and set(spec.l2_configs) == l2, name
    for config in spec.configs:
      assert spec.hf_split(config) == split.format(n=config[1:]), (name, config)
    assert heldout.PROMPT_SOURCES[name].startswith(heldout.EVALUATE_MT0), name
  # The script's English rows: 170 in DATASETS_AND_CONFIGS_L1 + 80 in _L2 = 50 configs x 5.
  assert len(heldout.all_entries()) == 5 * 50


def _original_task(templates: str) -> dict[str, bool]:
  class _Loader(yaml.SafeLoader):
    pass

  def mapping(loader, node):
    return loader.construct_mapping(node, deep=True)

  _Loader.add_constructor("!Template", mapping)
  _Loader.add_constructor("!TemplateMetadata", mapping)
  path = heldout.TEMPLATES_DIR / templates / "templates.yaml"
  data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
  return {t["name"]: t["metadata"]["original_task"] for t in data["templates"].values()}


def test_published_list_departs_from_t0s_original_task_rule_in_two_prompts_only():
  """T0's evaluation keeps original_task prompts; mT0's published one drew at random. The two
  differ only where the random draw took an original_task: false prompt (promptsource 0.2.3)."""
  off = {(name, p) for name, spec in heldout.DATASETS.items()
         for p, original in _original_task(spec.templates).items()
         if p in spec.prompts and not original}
  assert off == {("winogrande", "True or False"), ("xwinograd", "True or False"),
                 ("story_cloze", "Generate Ending"), ("xstory_cloze", "Generate Ending")}
  wino = _original_task("winogrande/winogrande_xl")
  assert wino["fill in the blank"] and "fill in the blank" not in WINO
