"""pushjobs.tools"""
