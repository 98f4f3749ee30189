"""Tests for mailappliance. Run with: python3 -m twisted.trial tests"""
