include $(sort $(wildcard $(BR2_EXTERNAL_PEERCAM_PATH)/package/*/*.mk))
