"""memqa: how much SFT data, and which, does a pretrained LLM need for closed-book QA?

One module per pipeline stage (download, materialize, probe, split, sft, evaluate, plot, report), each a
thin Click command over plain functions in the shared modules (params, data, models, templates,
matching, generation, training).
"""
