"""Files in and out: .ply (INRIA 3DGS layout), checkpoints, atomic writes (exports: fsd_gs.export).

    from fsd_gs.io.ply import read_ply, write_ply
    from fsd_gs.io.atomic import atomic_open, atomic_write_bytes

Submodules are imported where they are used (plyfile and safetensors load only when needed).
"""
