"""memqa: how much SFT data, and which, does a pretrained LLM need for closed-book QA?

The library behind the DVC pipeline: one module per concept (config, paths, io, eq, models, engine, matching,
prompts, memory, the probe package, splits, training, evaluation, study, grid, verdicts, plots, report). The
stages in the project's `stages/` folder are thin Click commands over it; README "Where things live" maps
concepts to modules.
"""
