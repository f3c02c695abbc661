"""The quickstart's plans size its stages as intended (what the pipeline runs is tested by tests/test_quickstart.py)."""
from bench.pipeline.quickstart import evaluation
from bench.pipeline.quickstart_plans import PLANS


def test_the_default_plan_runs_the_per_expert_analysis_on_a_third_of_the_attacked_images():
    # the per-expert analysis costs E evaluations: on all 300 images it was two thirds of an MoE run's
    # evaluation (docs/PERFORMANCE.md); the smoke plan keeps all its images, and so its pinned numbers
    ev = evaluation(PLANS['default'])
    assert (ev.n_examples, ev.per_expert, ev.per_expert_examples) == (300, True, 100)
    assert evaluation(PLANS['smoke']).per_expert_examples is None
