"""pushjobs.agent"""
