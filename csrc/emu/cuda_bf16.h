// The emulator defines everything cuda_bf16.h would (csrc/emu/cuda_emu.h, force-included).
#pragma once
