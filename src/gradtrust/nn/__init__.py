"""The model adapter: how every capability sees a classifier (module, inputs, outputs, state)."""
