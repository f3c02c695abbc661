"""The quickstart's plans size its stages as intended (what the pipeline runs is tested by tests/test_quickstart.py)."""
from bench.pipeline.quickstart import cells, evaluation, longest_first
from bench.pipeline.quickstart_plans import PLANS


def test_the_default_plan_runs_the_per_expert_analysis_on_a_sixth_of_the_attacked_images():
    # the per-expert analysis costs E evaluations: on all 300 images it was two thirds of an MoE run's
    # evaluation (docs/PERFORMANCE.md); the smoke plan keeps all its images, and so its pinned numbers
    ev = evaluation(PLANS['default'])
    assert (ev.n_examples, ev.per_expert, ev.per_expert_examples, ev.n_check) == (300, True, 50, 50)
    assert evaluation(PLANS['smoke']).per_expert_examples is None


def test_the_cells_start_longest_first_so_that_the_two_processes_end_together(tmp_path):
    # adversarial before normal, and within each the BlockMoE (its per-expert analysis) before the dense: with two
    # processes the adversarial dense run, which ends first, is followed by the normal BlockMoE, the longer one
    todo = cells(PLANS['default'], tmp_path)
    started = [(todo[i]['training'].training, todo[i]['kind']) for i in longest_first(todo)]
    assert started == [('pgd', 'moe'), ('pgd', 'dense'), ('normal', 'moe'), ('normal', 'dense')]
