from memqa.accuracy import accuracy_metrics
from memqa.config import Probe, Split
from memqa.grid import columns
from memqa.memory import level_counts
from memqa.splits import build_splits

SPLIT = Split(levels=[0, 1], sizes=[4], seeds=[0], short_pool="use", drop_test_overlap=True)


def _probe(bounds: list[float]) -> Probe:
    return Probe(method="likelihood", templates=1, samples=1, temperature=0.7, max_new_tokens=8, matcher="contains",
                 level_bounds=bounds, batch_size=1, chunk_size=1, seed=0)


def _fact(i, split, question, relation="P36", domain="id"):
    return {"fact_id": f"{relation}/{split}/{i}", "relation": relation, "split": split, "domain": domain,
            "question": question, "answers": [f"A{i}"], "subject": f"S{i}"}


def _world():
    facts = [_fact(i, "train", f"What is the capital of S{i}?") for i in range(8)]
    facts += [_fact(100, "test", "What is the capital of S3?"), _fact(101, "test", "What is the capital of T?")]
    scores = [{"fact_id": f["fact_id"], "group": "train" if f["split"] == "train" else "test_id",
               "score": 0.0, "level": i % 2} for i, f in enumerate(facts)]
    return facts, scores


def test_training_sets_never_hold_a_test_question():
    facts, scores = _world()
    train_sets, _, metrics = build_splits(SPLIT, facts, scores, 5)
    trained = {f["question"] for rows in train_sets.values() for f in rows}
    assert "What is the capital of S3?" not in trained
    assert metrics["train_test_overlap"] == {"dropped": True, "facts": 1, "per_relation": {"P36": 1}}


def test_test_overlap_can_be_kept_by_param():
    facts, scores = _world()
    train_sets, _, metrics = build_splits(SPLIT.model_copy(update={"drop_test_overlap": False}), facts, scores, 5)
    assert "What is the capital of S3?" in {f["question"] for rows in train_sets.values() for f in rows}
    assert metrics["train_test_overlap"]["dropped"] is False


def test_number_of_levels_follows_the_bounds():
    n_levels = _probe([0.5, 0.9]).n_levels
    assert n_levels == 4 and columns(4)[-4:] == ["n_L0", "n_L1", "n_L2", "n_L3"]
    rows = [{"group": "train", "level": 3}, {"group": "test_id", "level": 0}]
    assert level_counts(rows, n_levels)["train"] == [0, 0, 0, 1]
    preds = [{"domain": "id", "level": 3, "correct": True}, {"domain": "id", "level": 0, "correct": False}]
    metrics = accuracy_metrics(preds, n_levels)["id"]
    assert metrics["n"] == {"L0": 1, "L1": 0, "L2": 0, "L3": 1} and metrics["L3"] == 100.0 and "L4" not in metrics
    facts, scores = _world()
    assert len(build_splits(SPLIT, facts, scores, n_levels)[2]["level_counts"]["train"]) == 4


def test_level_counts_in_probe_and_evaluation_metrics_are_scalars_dvc_can_show():
    from memqa.probe.run import probe_metrics

    conf = _probe([0.25, 0.5, 0.75])
    rows = [{"group": "train", "level": 1, "score": 0.1, "relation": "P17"},
            {"group": "test_id", "level": 0, "score": 0.0, "relation": "P17"}]
    counts = probe_metrics(rows, conf, 1, 0, 1)["level_counts"]
    assert counts["train"] == {"L0": 0, "L1": 1, "L2": 0, "L3": 0, "L4": 0}
    preds = [{"domain": "id", "level": 1, "correct": True}]
    n = accuracy_metrics(preds, conf.n_levels)["id"]["n"]
    assert n == {"L0": 0, "L1": 1, "L2": 0, "L3": 0, "L4": 0}


def test_split_metrics_count_the_levels_without_the_facts_whose_gold_is_in_the_subject():
    facts, scores = _world()
    facts[0]["subject"] = "A0 Tower"  # its gold "A0" sits in the subject; fact 0 is a level-0 train fact
    _, _, metrics = build_splits(SPLIT, facts, scores, 2)
    clean = metrics["matching_artifacts"]["level_counts_without_gold_in_subject"]
    # fact 3 (level 1) is dropped: its question is a test question
    assert clean["train"] == {"L0": 3, "L1": 3} and metrics["level_counts"]["train"] == [4, 3]
