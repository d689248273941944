"""The course's network as a class of your own: conv 6 5x5, max-pool, conv 16 5x5, max-pool,
linear 120, 84, 10; adapted from 3-channel 32x32 images to the MNIST family's 1-channel 28x28.

mnistlab builds it with the keyword arguments of model.args, plus num_classes because the
constructor has a parameter of that name (image_shape, (C, H, W), would be passed the same way).
"""

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, c1: int = 6, c2: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5)  # 28x28 -> 24x24, pooled to 12x12
        self.conv2 = nn.Conv2d(c1, c2, 5)  # 12x12 -> 8x8, pooled to 4x4 (5x5 for 32x32 inputs)
        self.fc1 = nn.Linear(c2 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)  # not x.view(-1, ...): training feeds channels-last batches
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
