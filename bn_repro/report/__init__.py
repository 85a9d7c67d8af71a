"""The analysis of runs and sweeps: tables, figures and reports (the scripts/ CLIs call these).

  results     reading runs and sweeps (Run, load_run, PointResult, SweepResults, load_sweep)
  aggregate   per point and over seeds: results.csv, aggregate.csv, results.md
  figure1     Figure 1 (MNIST, BN vs no BN): panels, drift, figure1.csv and figure1.md
  lr          learning-rate sensitivity
  figure3     Figures 2 and 3 of the Inception variants
  ablations   the ablation sweeps' figures and tables
  population  precise BN and AdaBN on a trained run
  report      REPORT.md and the files beside it
  paper       the paper's numbers and claims
  tables      Markdown tables and number formatting
  plots       figures without pyplot (headless and in notebooks)

Drawing functions return a `matplotlib.figure.Figure` and write nothing; `write...`
functions write files. Importing this package imports no module of it.
"""
