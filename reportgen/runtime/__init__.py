"""Process plumbing: the output folder and its lock (:mod:`.outdir`), atomic writes
(:mod:`.writes`), interrupts (:mod:`.interrupts`), progress bars (:mod:`.progress`) and lazily
bound modules (:mod:`.lazy`)."""
