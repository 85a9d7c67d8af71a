"""The speed benchmark: ours next to baselines in one process (scripts/benchmark.py).

loops.py            the timed loops: the floor, ours, the per-step Flax loop, batched runs,
                    the small BN-Inception
torch_reference.py  PyTorch eager twins of the MLP and the small BN-Inception (optional)
measure.py          interleaved rounds, paired ratios, memory, profile, the table
accelerator.py      BN-Inception at 224x224 (fp32, bf16: images/s, MFU) and the MNIST MLP's
                    loop on any device, without ml_collections or tfds
"""
