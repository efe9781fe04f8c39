"""Failover drills: a fenced actuator that is the ground truth of who drove the robot.

Node logs say what each controller believed; only the actuator knows which commands
reached the hardware. A drill therefore judges safety from the actuator's record (at
most one leadership driving at a time, tokens never going backwards), not from any
node's own account.
"""
