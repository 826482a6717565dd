# Never finishes the cell that defines the answer.
while True:
    pass
