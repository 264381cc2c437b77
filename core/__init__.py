"""m2u.core: the infrastructure every m2u package stands on, and nothing about faces or models.

fileio      atomic writes, clean-up of temporary files, the library versions record
imageio     reading any common image into uint8 RGB with a reason when it cannot be read
inputs      input discovery of every per-file tool, output-folder checks and locks, safe reads
checks      configuration values checked against their dataclass field types
configfile  config files (YAML/TOML/JSON) and --set overrides onto dataclasses
runtime     fields that change how a run goes, never what it writes (kept out of fingerprints)
parallel    worker pools that stop cleanly, OpenCV threads in forked workers
lazy        lazy public surfaces of package __init__ files; models loaded once per process
locks       locks a forked child can take (ForkSafeLock)
drawing     text labels on image strips (contact sheets, grids)
boxes       how two detection boxes overlap (IoU, the share of one inside the other)
outcome     the status vocabulary (ok, no_face, refused, error) and reason of every per-file tool
startup     what a console command settles before numpy loads (one BLAS thread per process)
"""
