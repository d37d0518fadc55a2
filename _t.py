import os; os.environ["TRITON_INTERPRET"]="1"
import torch
from deepcuts_fast.kernels import *
from deepcuts_fast.kernels.noise import add_noise
y=torch.randn(3*37*5); y0=y.clone(); add_noise(y, 0.5, 12345678901, 2, 9, range(1,4), backend="triton")
y1=y0.clone(); add_noise(y1, 0.5, 12345678901, 2, 9, range(1,4), backend="torch"); print("noise", (y-y1).abs().max())
x=torch.randn(70,40); dy=torch.randn(70,50); w=torch.randn(50,40); rw=torch.randn(50)
for be in ("torch","triton","cpp"):
  s=torch.zeros(50,40); r=torch.zeros(50); c=torch.zeros(40)
  weight_score(x,dy,w,rw,0.1,s,r,c,backend=be); print(be, s.sum().item(), r.sum().item(), c.sum().item())
  g=dy.t()@x; s=torch.zeros(50,40); r=torch.zeros(50); c=torch.zeros(40)
  weight_score_epilogue(w,g,rw,0.1,s,r,c,backend=be); print(be, s.sum().item(), r.sum().item(), c.sum().item())
  o=torch.zeros(4,40); m=(torch.rand(70)>0.3).float(); activation_stats(x, dy[:, :40], m, o, backend=be); print(be, o.sum(1))
