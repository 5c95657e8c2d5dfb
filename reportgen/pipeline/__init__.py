"""The pipeline, split by job: environment (device, seeds, versions), plan (what runs, unmet
needs, layer checks), dataset_pass, queries, execute (stage order, failures, torchrun), summary
and outputs. It runs whatever analyses it is handed; it imports none of them."""
