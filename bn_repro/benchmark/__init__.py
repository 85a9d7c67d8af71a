"""The speed benchmark: ours next to baselines in one process (scripts/benchmark.py).

loops.py            the timed loops: the floor, ours, the per-step Flax loop, batched runs,
                    the small BN-Inception
torch_reference.py  PyTorch eager twins of the MLP and the small BN-Inception (optional)
measure.py          interleaved rounds, paired ratios, memory, profile, the table
"""
