"""Find: the activation sites of a graph (sites), composite activations (composite), the per-op registry (gates)."""
