"""The model lifecycle: what an artifact is, and how a served one is checked, held and swapped.

Owns the artifact contract (file names, manifest schema; imported by training too), the
registry reader, verification and loading, the alias store that hot-reloads, the watcher
that follows the registry, the ONNX scorer, the runtime explainer (it reads the reason
tables training compiles) and the challenger's shadow. May import `service.core`,
`service.features` (the feature contract) and `service.observability`; never gRPC.
"""
