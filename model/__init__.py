"""A decoder-only transformer in XVERSE-65B's shape, with attention over packed documents."""
