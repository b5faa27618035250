"""How ranks agree: a sequence-parallel stream's process group and the agreement every rank reaches before it acts,
and the DeepSpeed-Ulysses forwards that deal the heads out to the ranks."""
