"""The probe: memory score R of every fact (multi-template complementation), sharded and resumable.

    estimators.py   the registry (probe.method -> estimator), the sample and likelihood estimators, score_facts
    containment.py  greedy_containment's lower bound and rao_blackwell's unbiased estimates of P(contains)
    tracing.py      the path tracer both read (decode paths, fork them to teacher-force answer variants)
    shards.py       the shard cache and its fingerprint (params, weight files, facts, templates, scoring code)
    run.py          run_probe (the stage's work) and its crosscheck against another method
"""
from memqa.probe.containment import greedy_containment, rao_blackwell
from memqa.probe.estimators import ESTIMATORS, Estimator, score_facts
from memqa.probe.run import crosscheck, run_probe
from memqa.probe.shards import SCORING_CODE, fingerprint, probe_sharded, shard_plan, weights_digest
from memqa.probe.tracing import answer_settled, answer_variants, trace_paths

__all__ = ["ESTIMATORS", "SCORING_CODE", "Estimator", "answer_settled", "answer_variants", "crosscheck",
           "fingerprint", "greedy_containment", "probe_sharded", "rao_blackwell", "run_probe", "score_facts",
           "shard_plan", "trace_paths", "weights_digest"]
