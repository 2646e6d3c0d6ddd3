"""A counter: the smallest migrated app. Run it with: mig run examples/counter.py"""

import migrated


class Counter(migrated.App):
    def start(self):
        self.n = 0

    def step(self):
        self.n += 1
        print(self.n)
        return 1.0

    def on_input(self, line):
        self.n = int(line)
        print(f"set to {self.n}")
