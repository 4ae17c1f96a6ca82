/** LoRA, rsLoRA and DoRA (PEFT's peft_type "LORA"). */
export * from './adapter';
export * from './config';
