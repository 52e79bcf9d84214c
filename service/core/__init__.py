"""The scoring use case and the values it works with: a raw transaction in, a decision out.

Owns the domain types, request validation, card tokens, currencies, the domain errors and
the `Scorer` with its fallback policy. It imports nothing from the other layers: what it
needs of them (feature state, a model that scores a row, whoever listens to answers) it
names as small protocols in `service.core.ports`, and the composition root
(`service.app`) plugs the real ones in.
"""
