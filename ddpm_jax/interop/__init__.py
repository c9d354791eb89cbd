"""diffusers interop: UNet2DModel/DDPMScheduler folders in and out, as weights and as workdirs. [I/O]"""
