"""Sweeps: a grid of config fields over a base config, one trainer process per point.

A sweep file (e.g. bn_repro/configs/mnist_sweeps.py) declares its grids next to its base config
and exposes `get_sweep(name) -> Sweep`:

  from bn_repro.sweeps import grid as sw
  sw.Sweep(base="mnist_mlp.py:bn_sigmoid",  # relative to the sweep file
           grid=sw.product(sw.axis("model.use_bn", (True, False)),
                           sw.axis("optimizer.learning_rate", (0.1, 1.0))),
           fixed={"max_loss": 1e3},
           aliases={"model.use_bn": "bn", "optimizer.learning_rate": "lr"})

A point is a dict of dotted config fields -> values; its key "config" picks another
variant of the base file ("bn_x5") or another file ("inception.py:bn_x5"). A point's
name lists its values sorted by alias ("bn=on,lr=0.1"): it depends on the point alone,
not on dict or grid order.

Runner (`python -m bn_repro.sweeps`, or the console script):
  bn-repro-sweep --sweep=mnist_sweeps:lr_grid --workdir=runs/lr \
      [--parallel=N] [--override=FIELD=VALUE ...] [--point=NAME ...] [--print_commands] \
      [--batched [--max_batched_runs=N]] [--launcher=slurm --slurm_partition=P ...]

Each point runs as `python -m bn_repro.main --config=... --workdir=<workdir>/<name>
--config.<field>=<value> ...` in its own process, so a crash or divergence in one never
touches another. `--print_commands` prints instead one command per point (for a job
array: `sed -n "${SLURM_ARRAY_TASK_ID}p" commands.txt | bash`); each runs that point
through this runner, so statuses and skipping work the same way.

`--batched`: points whose configs differ only in bn_repro.training.VARYING (seed,
learning rate) and that resume from the same checkpoint step train together, one
process and one compiled program per group (`runner.batch_groups`; the child is this
runner with `--in_process --point=A --point=B ...`, its output in the first point's log);
a diverging point is recorded and its partners go on. Points training.check_batchable refuses, and
groups of one, run as above. On a CPU host the child makes `--cpu_devices` JAX devices
(default: the usable CPUs / --parallel) and spreads the group's runs over them
(bn_repro.parallel.run_shards). Each point's files are those of a single run (on this
project's CPU, bit for bit in the layouts measured: docs/RESULTS.md, Batched runs).
`--print_commands` then prints one command per group.
Batching is a flag, not a field of the Sweep, because it changes how the points run,
not what they are: the same sweep runs either way, and which is faster depends on the
machine.

Layout (bn_repro.rundir): the sweep directory (SweepDir) holds the sweep's record (the
sweep, its points and their commands) and one run directory (RunDir) per point: the
trainer's files plus the runner's log, environment and lock.
Status: pending, running, done, diverged (step), stopped (step: SIGTERM, checkpoint
saved), failed (error). Done and diverged points are skipped (a done one whose num_steps
was raised since runs on); the others run again and the trainer resumes from its checkpoint.

Exit codes: 0 every selected point done or diverged; 1 some point failed or did not
finish; 2 bad input (one line on stderr, nothing written); 128+N after signal N.

Placement: jobs side by side get disjoint devices (visible-devices variables) on GPU and
TPU hosts and disjoint CPU cores (affinity) on CPU hosts (devices.py). Progress: after each
point, finished / total, failures and an ETA, also in the sweep's log.txt.
`--launcher=slurm` submits the unfinished points as one submitit job array, a task a
point running this runner with --point=NAME (slurm.py).

Modules: grid (the language of sweep files, standard library only), resolve (loading a
sweep file, points against their configs), runner (jobs and their processes), devices
(which devices and cores a job gets), outcomes (a point's status before and after a job),
progress (the progress line), slurm (the job-array launcher), environment (what a job's
machine has), cli (the flags and main).
"""
