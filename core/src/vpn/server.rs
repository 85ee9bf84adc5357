//! The VPN server machine (spec/vpn.md, VPN-V…): placeholder, being written.
