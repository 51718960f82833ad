"""Runnable examples of the methods evidex implements, kept apart from the library
(which imports none of them):

    python -m evidex.examples.clara         CLaRa: selector and generator trained jointly
    python -m evidex.examples.rl            Embed-RL: GRPO of a reasoner against the rewards
    python -m evidex.examples.rge           RGE: embeddings after a generated rationale
    python -m evidex.examples.rar           RAR on easy-VQA, with a captioner trained here
    python -m evidex.examples.rar_ablation  RAR's four-configuration table
"""
