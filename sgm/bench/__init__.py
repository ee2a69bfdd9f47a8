"""The step-count-vs-quality benchmark harness (``sgm bench``): every sampler over score-evaluation budgets (NFE)
on exact-score mixtures, and sgm against other libraries' samplers. Not loaded by ``import sgm``.

One module per job, data flowing down the list:

- ``problems``: the targets, each under VP, VE, rectified flow and EDM's path: the start ``x_T`` from one draw
  ``z``, the exact reference flow map, a target sample and its SW₂ floor, the exact model on the chain and at a noise
  level;
- ``runs``: sgm's side: the curve runs, the comparison and stochastic configurations (from the sampler registry's
  entries) on every spacing, a trained checkpoint;
- ``calibrated``: the calibrated rows: each step optimiser's grid and each learned correction, calibrated on prior
  draws disjoint from ``x_T``, with its cost;
- ``peers``: other libraries, one module each (``peers.diffusers``, ``peers.diffusers_flow``,
  ``peers.k_diffusion``), driven by the exact model from the same ``z``;
- ``trained``: the trained-network leg: a network's own flow map as reference, screening, finalists, classifier FD;
- ``stochastic``: the stochastic leg: every stochastic configuration of both sides screened, each side's finalists
  confirmed on fresh, larger draws (the goal's rows);
- ``judge``: how any run is scored: map error (and SW₂ in the comparison), the distribution metrics (and the
  stochastic leg's) and their floors, diverged rows;
- ``strong``: the stochastic leg's strong error, against a fine-step run on the same Brownian paths;
- ``report``: the goal, cross-path and summary tables, ``results.csv`` / ``compare.csv`` / ``goal.md`` /
  ``paths.md`` / ``stochastic.csv`` / ``stochastic_confirmed.csv`` / ``stochastic_goal.md`` / ``results.json``,
  figures;
- ``sweep``: the loop over problems, runs and peers, and the command's arguments.

A new problem family is an entry of ``problems.TARGETS`` (or a maker beside ``make_problem``), a new peer library
a module in ``peers/`` named in ``peers.PEERS``, a new run family a function in ``runs`` (or a module beside it)
returning rows that ``judge`` scores. docs/benchmark.md describes the protocol and its results.
"""
